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


SPARSE = ("indices", "values", "tokens")


def encode(protocol: str, c, texts, outputs=OUTPUTS, parameters=None, model: str = "splade") -> dict[str, np.ndarray]:
    """Call the ``model`` ensemble for the sparse outputs and ``<model>_embedding``
    for ``embedding`` (only the calls the requested outputs need); return them by name."""
    mod, result = PROTOCOLS[protocol], {}
    sparse = [n for n in outputs if n in SPARSE]
    calls = [(model, sparse)] if sparse else []
    if "embedding" in outputs:
        calls.append((f"{model}_embedding", ["embedding"]))
    for name, names in calls:
        requested = [mod.InferRequestedOutput(n) for n in names]
        answer = c.infer(name, [text_input(protocol, texts)], outputs=requested, parameters=parameters)
        result.update({n: answer.as_numpy(n) for n in names})
    return {n: result[n] for n in outputs}


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


def assert_serves_alike(server, reference_server, texts) -> None:
    """``server`` answers ``texts`` as ``reference_server`` does (splade: indices, tokens, values), over HTTP and gRPC."""
    for protocol in ("http", "grpc"):
        got = encode(protocol, client(protocol, server), texts, outputs=("indices", "values", "tokens"))
        want = encode(protocol, client(protocol, reference_server), texts, outputs=("indices", "values", "tokens"))
        for name in ("indices", "tokens"):
            np.testing.assert_array_equal(got[name], want[name])
        np.testing.assert_allclose(got["values"], want["values"], atol=1e-6)
