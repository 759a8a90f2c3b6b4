"""Bad requests get their own INVALID_ARG; everything else keeps working."""

from __future__ import annotations

import numpy as np
import pytest

from tests import triton


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


def bad_text_input(protocol, kind):
    mod = triton.PROTOCOLS[protocol]
    if kind == "wrong dtype":
        tensor = mod.InferInput("text", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.zeros((1, 1), np.int32))
        return tensor
    if kind == "wrong name":
        return triton.text_input(protocol, ["hello"], name="query")
    if kind == "empty batch":
        tensor = mod.InferInput("text", [0, 1], "BYTES")
        tensor.set_data_from_numpy(np.zeros((0, 1), dtype=object))
        return tensor
    if kind == "wrong shape":
        tensor = mod.InferInput("text", [1, 2], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
        return tensor
    texts = {
        "not utf-8": [b"ok", b"caf\xe9 au lait"],
        "too long": ["fine", "x" * 65537],
        "too many texts": ["t"] * 65,
    }[kind]
    return triton.text_input(protocol, texts)


CASES = {
    "not utf-8": "text 1 is not valid UTF-8",
    "too long": "text 1 is 65537 bytes; the limit is 65536 bytes (max_text_bytes)",
    "too many texts": "batch-size must be <= 64",
    "wrong dtype": "data-type is 'INT32', but model 'splade' expects 'BYTES'",
    "wrong name": "unexpected inference input 'query'",
    "empty batch": "expected 1 string elements for inference input 'text'",
    "wrong shape": "unexpected shape for input 'text'",
}


def assert_still_serving(protocol, c):
    assert c.is_server_ready() and c.is_model_ready("splade")
    out = triton.encode(protocol, c, ["what is the capital of france"], outputs=("tokens",))
    assert out["tokens"][0, :2].tolist() == [b"capital", b"france"]


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input(protocol, server, kind):
    c = triton.client(protocol, server)
    e = triton.error_of(lambda: c.infer("splade", [bad_text_input(protocol, kind)]))
    assert triton.is_invalid_arg(e), e
    assert CASES[kind] in e.message()
    assert_still_serving(protocol, c)


@pytest.mark.parametrize("parameters,message", [
    ({"top_k": -3}, "top_k must be an integer between 0 and"),
    ({"top_k": 2.5}, "top_k must be an integer"),
    ({"top_k": "ten"}, "top_k must be an integer"),
    ({"min_weight": -1.0}, "min_weight must be a finite number >= 0"),
    ({"min_weight": float("nan")}, "min_weight must be a finite number >= 0, got nan"),
    ({"top-k": 5}, "unknown request parameter(s): top-k"),
])
def test_bad_request_parameters(protocol, server, parameters, message):
    c = triton.client(protocol, server)
    e = triton.error_of(lambda: triton.encode(protocol, c, ["hello"], parameters=parameters))
    assert triton.is_invalid_arg(e), e
    assert message in e.message()
    assert_still_serving(protocol, c)


@pytest.mark.parametrize("text", ["", " ", "\t\n", "a\x00b"])
def test_empty_whitespace_and_nul_are_valid_texts(protocol, server, text, reference_encode, vocab_size):
    c = triton.client(protocol, server)
    out = triton.encode(protocol, c, [text], outputs=("indices", "values"))
    dense = triton.densify(out["indices"], out["values"], vocab_size)
    np.testing.assert_allclose(dense, reference_encode([text]), rtol=0, atol=1e-4)


# That a bad request fails alone in the execution it shares with good ones (Triton's batch
# statistics show they shared it): tests/test_batch_isolation.py.
