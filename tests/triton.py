"""Small helpers over tritonclient for the tests (HTTP and gRPC alike)."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
OUTPUTS = ("indices", "values", "tokens", "embedding")


def client(protocol: str, server):
    url = server.http_url if protocol == "http" else server.grpc_url
    return PROTOCOLS[protocol].InferenceServerClient(url)


def text_input(protocol: str, texts, name: str = "text"):
    data = np.array([[t.encode("utf-8") if isinstance(t, str) else t] for t in texts], dtype=object).reshape(-1, 1)
    tensor = PROTOCOLS[protocol].InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def encode(protocol: str, c, texts, outputs=OUTPUTS, parameters=None) -> dict[str, np.ndarray]:
    """Call the ``splade`` ensemble; return the requested outputs by name."""
    requested = [PROTOCOLS[protocol].InferRequestedOutput(n) for n in outputs]
    result = c.infer("splade", [text_input(protocol, texts)], outputs=requested, parameters=parameters)
    return {n: result.as_numpy(n) for n in outputs}


def error_of(fn) -> InferenceServerException:
    """Run fn, which must fail with a server error, and return that error."""
    try:
        fn()
    except InferenceServerException as e:
        return e
    raise AssertionError("the request succeeded; an error was expected")


def is_invalid_arg(e: InferenceServerException) -> bool:
    return e.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def densify(indices: np.ndarray, values: np.ndarray, vocab_size: int) -> np.ndarray:
    dense = np.zeros((indices.shape[0], vocab_size), dtype=np.float32)
    for row, (idx, val) in enumerate(zip(indices, values)):
        keep = idx >= 0
        dense[row, idx[keep]] = val[keep]
    return dense
