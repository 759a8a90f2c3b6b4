"""Long texts: truncate (default), error, chunk (max over windows), truncation direction, token counts.

Every served vector is checked against transformers on the same windows:
the model's own fast tokenizer cuts them (``return_overflowing_tokens``,
``stride``, ``truncation_side``), the MLM encodes each, the literal SPLADE
formula pools each, the max is taken over a text's windows.
"""

from __future__ import annotations

import json
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests import triton
from tests.conftest import assemble_variant, load_failure, running

MAX_LENGTH = 512


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.fixture
def client(protocol, server):
    return triton.client(protocol, server)


def real_text(tokens: int, tokenizer) -> str:
    """At least ``tokens`` tokens of real English and code: the standard library's own sources."""
    parts, count = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        count += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if count >= tokens:
            break
    text = "\n".join(parts)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:tokens])


@pytest.fixture(scope="module")
def windows_reference(reference_model):
    """text -> [windows, vocab]: transformers' windows of ``text``, each pooled by the SPLADE formula."""
    import torch

    tokenizer, mlm = reference_model

    def encode(text: str, stride: int = 0, side: str = "right", chunk: bool = True) -> np.ndarray:
        tokenizer.truncation_side = side
        try:
            batch = tokenizer(text, truncation=True, max_length=MAX_LENGTH, stride=stride, padding=True,
                              return_overflowing_tokens=chunk, return_tensors="pt")
        finally:
            tokenizer.truncation_side = "right"
        rows = []
        with torch.inference_mode():
            for i in range(0, batch["input_ids"].shape[0], 16):
                ids, mask = batch["input_ids"][i : i + 16], batch["attention_mask"][i : i + 16]
                logits = mlm(input_ids=ids, attention_mask=mask).logits
                rows.append((torch.log1p(torch.relu(logits)) * mask.unsqueeze(-1)).amax(dim=1).numpy())
        return np.concatenate(rows)

    return encode


def full_count(reference_model, text: str) -> int:
    return len(reference_model[0](text, add_special_tokens=True)["input_ids"])


def assert_same_vectors(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got > 0, expected > 0)


@pytest.fixture(scope="module")
def long_text(reference_model):
    return real_text(1500, reference_model[0])


def infer(protocol, c, texts, parameters=None, model="splade", outputs=("indices", "values", "num_tokens",
                                                                         "truncated", "windows")):
    mod = triton.PROTOCOLS[protocol]
    answer = c.infer(model, [triton.text_input(protocol, texts)], parameters=parameters,
                     outputs=[mod.InferRequestedOutput(n) for n in outputs])
    return {n: answer.as_numpy(n) for n in outputs}


def test_every_response_counts_tokens_and_says_what_was_cut(protocol, client, reference_model, long_text,
                                                            reference_encode, vocab_size):
    texts = ["", "what is the capital of france", long_text]
    out = infer(protocol, client, texts)
    assert out["num_tokens"].dtype == np.int32 and out["num_tokens"].shape == (3, 1)
    assert out["num_tokens"].ravel().tolist() == [full_count(reference_model, t) for t in texts]
    assert out["truncated"].dtype == bool and out["truncated"].ravel().tolist() == [False, False, True]
    assert out["windows"].ravel().tolist() == [1, 1, 1]
    # No new parameter: today's vectors (the first 512 tokens).
    assert_same_vectors(triton.densify(out["indices"], out["values"], vocab_size), reference_encode(texts))


def test_error_mode_refuses_a_long_text_naming_its_count(protocol, client, reference_model, long_text):
    e = triton.error_of(lambda: infer(protocol, client, ["short", long_text], {"overflow": "error"}))
    assert triton.is_invalid_arg(e)
    count = full_count(reference_model, long_text)
    assert f"text 1 has {count} tokens; the limit is 512 tokens (input_type document)" in e.message()
    # Texts within the limit are answered in error mode; the server stays ready.
    out = infer(protocol, client, ["short", "a text of a few tokens"], {"overflow": "error"})
    assert out["truncated"].ravel().tolist() == [False, False]
    assert client.is_server_ready()


def test_chunk_is_the_max_over_windows(protocol, client, windows_reference, reference_encode, long_text,
                                       reference_model, vocab_size):
    texts = [long_text, "what is the capital of france"]
    out = infer(protocol, client, texts, {"overflow": "chunk"})
    windows = windows_reference(long_text)
    assert windows.shape[0] > 2
    assert out["windows"].ravel().tolist() == [windows.shape[0], 1]
    assert out["truncated"].ravel().tolist() == [False, False]
    assert out["num_tokens"].ravel().tolist() == [full_count(reference_model, t) for t in texts]
    got = triton.densify(out["indices"], out["values"], vocab_size)
    assert_same_vectors(got[0], windows.max(axis=0))
    assert_same_vectors(got[1], reference_encode(texts[1:])[0])
    # More than the first window: chunking found terms truncation cannot.
    first = reference_encode([long_text])[0]
    assert ((got[0] > 0) & (first == 0)).sum() > 0


def test_left_truncation_keeps_the_end(protocol, client, windows_reference, long_text, vocab_size):
    out = infer(protocol, client, [long_text], {"truncation_direction": "left"})
    assert out["truncated"].ravel().tolist() == [True]
    got = triton.densify(out["indices"], out["values"], vocab_size)[0]
    assert_same_vectors(got, windows_reference(long_text, side="left", chunk=False)[0])
    chunked = infer(protocol, client, [long_text], {"overflow": "chunk", "truncation_direction": "left"})
    left = windows_reference(long_text, side="left")
    assert chunked["windows"].ravel().tolist() == [left.shape[0]]
    assert_same_vectors(triton.densify(chunked["indices"], chunked["values"], vocab_size)[0], left.max(axis=0))


def test_the_windows_ensemble_returns_each_windows_vector(protocol, client, windows_reference, long_text, vocab_size):
    outputs = ("indices", "values", "window_indices", "window_values", "window_tokens", "text_index", "windows")
    out = infer(protocol, client, ["first text", long_text], {"overflow": "chunk", "top_k": 0},
                model="splade_windows", outputs=outputs)
    expected = windows_reference(long_text)
    assert out["text_index"].ravel().tolist() == [0] + [1] * expected.shape[0]
    per_window = triton.densify(out["window_indices"], out["window_values"], vocab_size)
    assert_same_vectors(per_window[1:], expected)
    texts = triton.densify(out["indices"], out["values"], vocab_size)
    assert_same_vectors(texts[1], per_window[1:].max(axis=0))
    assert out["window_tokens"].shape == out["window_indices"].shape


def test_top_k_applies_to_the_text_after_the_max(protocol, client, long_text):
    full = infer(protocol, client, [long_text], {"overflow": "chunk"})
    top = infer(protocol, client, [long_text], {"overflow": "chunk", "top_k": 5})
    np.testing.assert_array_equal(top["indices"][0], full["indices"][0][:5])


def test_a_50000_token_document_is_answered_beside_short_texts(server, reference_model, windows_reference,
                                                               reference_encode, vocab_size):
    document = real_text(50_000, reference_model[0])
    count = full_count(reference_model, document)
    assert count >= 50_000
    client = triton.client("grpc", server)
    with ThreadPoolExecutor(4) as pool:
        long = pool.submit(infer, "grpc", client, [document], {"overflow": "chunk"})
        shorts = [pool.submit(infer, "grpc", triton.client("grpc", server), ["what is the capital of france"])
                  for _ in range(8)]
        out, short = long.result(), [f.result() for f in shorts]
    windows = -(-(count - 2) // (MAX_LENGTH - 2))
    assert out["windows"].ravel().tolist() == [windows]
    assert out["num_tokens"].ravel().tolist() == [count]
    got = triton.densify(out["indices"], out["values"], vocab_size)[0]
    assert_same_vectors(got, windows_reference(document).max(axis=0))
    expected = reference_encode(["what is the capital of france"])[0]
    for answer in short:
        assert_same_vectors(triton.densify(answer["indices"], answer["values"], vocab_size)[0], expected)


def test_too_many_windows_and_bad_options_are_refused(protocol, client):
    # ~500,000 one-token words in under 1 MiB: over the 512 windows a request may make.
    e = triton.error_of(lambda: infer(protocol, client, ["a " * 500_000], {"overflow": "chunk"}))
    assert triton.is_invalid_arg(e)
    assert "windows of up to 512 tokens; the limit is 512 per request (max_windows)" in e.message()
    for parameters, message in [
        ({"overflow": "chunky"}, "overflow must be one of truncate, error, chunk, got 'chunky'"),
        ({"truncation_direction": "up"}, "truncation_direction must be 'right' or 'left', got 'up'"),
        ({"truncation-direction": "left"}, "truncation-direction (did you mean truncation_direction?)"),
        ({"input_type": "doc"}, "input_type must be 'query' or 'document'"),
    ]:
        e = triton.error_of(lambda: infer(protocol, client, ["a text"], parameters))
        assert triton.is_invalid_arg(e) and message in e.message(), e.message()
    # Chunk mode does not apply max_text_bytes (the whole text is encoded); truncate does.
    big = "word " * 14_000  # 70,000 bytes
    e = triton.error_of(lambda: infer(protocol, client, [big]))
    assert "the limit is 65536 bytes (max_text_bytes)" in e.message()
    assert infer(protocol, client, [big], {"overflow": "chunk"})["windows"][0, 0] > 1
    assert client.is_server_ready()


def test_overlapping_windows_and_a_chunking_default_in_config(tmp_path, windows_reference, long_text,
                                                              reference_model, vocab_size):
    repository = assemble_variant(tmp_path, tokenizer={"parameters": {"chunk_overlap": 128, "overflow": "chunk"}})
    with running(repository, tmp_path / "server.log") as srv:
        for protocol in ("http", "grpc"):
            out = infer(protocol, triton.client(protocol, srv), [long_text, "short"])
            expected = windows_reference(long_text, stride=128)
            content = full_count(reference_model, long_text) - 2
            assert expected.shape[0] == 1 + -(-(content - 510) // (510 - 128))
            assert out["windows"].ravel().tolist() == [expected.shape[0], 1]
            got = triton.densify(out["indices"], out["values"], vocab_size)
            assert_same_vectors(got[0], expected.max(axis=0))
            assert infer(protocol, triton.client(protocol, srv), [long_text],
                         {"overflow": "truncate"})["truncated"][0, 0]


def test_chunk_is_refused_where_the_pipeline_cannot_aggregate(bge_m3_server):
    client = triton.client("grpc", bge_m3_server)
    e = triton.error_of(lambda: infer("grpc", client, ["a text"], {"overflow": "chunk"}, model="bge_m3",
                                      outputs=("dense",)))
    assert triton.is_invalid_arg(e)
    assert "overflow 'chunk' is not served by this pipeline" in e.message()
    out = infer("grpc", client, ["a text", "word " * 600], {"overflow": "truncate"}, model="bge_m3",
                outputs=("num_tokens", "truncated", "windows"))
    assert out["truncated"].ravel().tolist() == [False, True]
    assert out["windows"].ravel().tolist() == [1, 1]


def test_the_client_and_the_command_line_ask_for_sides_and_chunks(server, capsys, windows_reference, long_text,
                                                                 vocab_size):
    from client import InvalidRequestError, SpladeClient
    from client.cli import main

    url = f"grpc://{server.grpc_url}"
    with SpladeClient(url) as c:
        chunked = c.encode(long_text, overflow="chunk")
        assert chunked.to_native() == c.encode([long_text], overflow="chunk", input_type="document")[0].to_native()
        expected = windows_reference(long_text).max(axis=0)
        got = np.zeros(vocab_size, np.float32)
        got[chunked.indices] = chunked.values
        assert_same_vectors(got, expected)
        with pytest.raises(InvalidRequestError, match="has .* tokens; the limit is 512"):
            c.encode(long_text, overflow="error")
    code = main(["embed", "--url", url, "--overflow", "chunk", "--input-type", "query", "--format", "native",
                 long_text])
    out, _ = capsys.readouterr()
    assert code == 0
    served = json.loads(out)[0]
    assert set(served["indices"]) == set(np.flatnonzero(expected))


def test_an_overlap_beyond_half_a_window_fails_the_load_naming_it(tmp_path):
    repository = assemble_variant(tmp_path, tokenizer={"parameters": {"chunk_overlap": 300}})
    message = "chunk_overlap=300 of model 'splade_tokenizer' must be at most half"
    assert message in load_failure(repository, tmp_path / "server.log", message)
