"""Query and document sides, served: asymmetric models against sentence-transformers' SparseEncoder.

Three tiny random models in the layouts such models ship (script/setup builds
and exports them; splade_triton/artifacts/asymmetric.py):

- ``router``: sentence-transformers' Router, an inference-free query side
  (SparseStaticEmbedding: a weight per token, no transformer) and an MLM
  document side with OpenSearch v3's log1p(log1p(relu));
- ``opensearch``: OpenSearch's idf.json beside a masked-LM document encoder
  (log1p(relu));
- ``pair``: a Router with its own MLM on each side (efficient-splade).

All three are served side by side in one tritonserver; each request's
``input_type`` routes it. Every served vector equals SparseEncoder's
``encode_query`` / ``encode_document`` on the same directory within 1e-4,
with the same non-zero terms, over HTTP and gRPC, batched with the other
side's requests or alone.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from splade_triton.artifacts import asymmetric
from splade_triton.artifacts.texts import VARIED_TEXTS
from tests import triton
from tests.conftest import MODELS, SIDES_PIPELINES

PIPELINES = SIDES_PIPELINES


def distinct_words(n: int) -> str:
    """``n`` different whole words of the fixtures' vocabulary (BERT uncased, shared by all
    three), one token each: a text whose beginning, end and whole give different vectors."""
    path = MODELS / PIPELINES["router"] / "tokenizer.json"
    if not path.is_file():
        return ""  # not exported: sides_server fails, saying so
    vocab = json.loads(path.read_text())["model"]["vocab"]
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and len(w) >= 4)
    return " ".join(words[:: len(words) // n][:n])


LONG = distinct_words(700)  # past every side's max_length
TEXTS = [*VARIED_TEXTS, "[CLS] a literal [MASK] token", LONG]




@pytest.fixture(scope="module")
def reference():
    """pipeline -> {side: SparseEncoder's vectors of TEXTS [n, vocab]}."""
    out = {}
    for name, folder in PIPELINES.items():
        layout = asymmetric.inspect(MODELS / f"{folder}-src")
        out[name], _ = asymmetric.st_reference(layout, TEXTS)
    return out


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


def encode(protocol, server, pipeline, texts, input_type, **parameters):
    client = triton.client(protocol, server)
    out = triton.encode(protocol, client, texts, outputs=("indices", "values"), model=pipeline,
                        parameters={"input_type": input_type, **parameters})
    return triton.densify(out["indices"], out["values"], 30522)


def assert_same(got, expected):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got != 0, expected != 0)


@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("side", ["query", "document"])
def test_served_sides_equal_sentence_transformers(protocol, sides_server, reference, pipeline, side):
    assert_same(encode(protocol, sides_server, pipeline, TEXTS, side), reference[pipeline][side])
    # Alone too: whatever a text is batched with.
    for i in (0, len(TEXTS) - 1):
        assert_same(encode(protocol, sides_server, pipeline, [TEXTS[i]], side)[0], reference[pipeline][side][i])


def test_the_static_query_side_is_idf_of_each_distinct_token(sides_server):
    """q_j = idf_j for each distinct non-special token (the export's weight table, looked up)."""
    from tokenizers import Tokenizer

    folder = MODELS / PIPELINES["router"]
    weights = np.load(folder / "query_weights.npy")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = "paris paris is the capital of france"
    ids = set(tokenizer.encode(text, add_special_tokens=False).ids)
    got = encode("grpc", sides_server, "router", [text], "query")[0]
    assert set(np.flatnonzero(got)) == {i for i in ids if weights[i] != 0}
    np.testing.assert_array_equal(got[sorted(ids)], weights[sorted(ids)])
    # No [CLS] / [SEP]: the query side adds no special tokens, as SparseStaticEmbedding.
    assert got[tokenizer.token_to_id("[CLS]")] == 0 and got[tokenizer.token_to_id("[SEP]")] == 0


def test_both_sides_in_one_execution(sides_server, reference):
    """Concurrent queries and documents of every pipeline: each routed to its own encoder."""
    jobs = [(pipeline, side, i) for pipeline in PIPELINES for side in ("query", "document") for i in range(6)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda job: encode("grpc", sides_server, job[0], [TEXTS[job[2]]], job[1])[0], jobs))
    for (pipeline, side, i), got in zip(jobs, results):
        assert_same(got, reference[pipeline][side][i])


def test_sides_count_tokens_their_own_way(sides_server):
    client = triton.client("grpc", sides_server)
    text = "what is the capital of france"
    counts = {}
    for side in ("query", "document"):
        out = triton.encode("grpc", client, [text, ""], outputs=("indices",), model="router",
                            parameters={"input_type": side})
        answer = client.infer("router", [triton.text_input("grpc", [text, ""])], parameters={"input_type": side})
        counts[side] = answer.as_numpy("num_tokens").ravel().tolist()
        assert out["indices"].shape[0] == 2
    # The query side adds no [CLS] / [SEP]; an empty query has no tokens and no terms.
    assert [d - q for q, d in zip(counts["query"], counts["document"])] == [2, 2]
    assert counts["query"][1] == 0


def test_a_static_query_side_truncates_either_end_and_chunks(sides_server, reference):
    """700 distinct one-token words, past the side's 512: right truncation keeps the first 512
    tokens' weights, left the last 512, chunk all 700; three different vectors."""
    from tokenizers import Tokenizer

    folder = MODELS / PIPELINES["router"]
    weights = np.load(folder / "query_weights.npy")
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(LONG, add_special_tokens=False).ids
    assert len(ids) == len(set(ids)) == 700

    def static(kept):
        vector = np.zeros(weights.shape, np.float32)
        vector[kept] = weights[kept]
        return vector

    want = {"right": static(ids[:512]), "left": static(ids[-512:]), "chunk": static(ids)}
    modes = {"right": {}, "left": {"truncation_direction": "left"}, "chunk": {"overflow": "chunk"}}
    got = {mode: encode("grpc", sides_server, "router", [LONG], "query", **options)[0] for mode, options in modes.items()}
    for mode in modes:
        assert_same(got[mode], want[mode])
    # sentence-transformers truncates on the right.
    assert_same(got["right"], reference["router"]["query"][-1])
    for a, b in (("right", "left"), ("right", "chunk"), ("left", "chunk")):
        assert (got[a] != got[b]).sum() >= 100, f"{a} and {b} give the same vector"
