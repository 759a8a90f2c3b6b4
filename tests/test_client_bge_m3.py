"""The BGE-M3 client (client/m3.py, BgeM3Client): FlagEmbedding's output form and scores, compared
number for number with FlagEmbedding's own functions on random vectors, and what is requested."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from FlagEmbedding.finetune.embedder.encoder_only.m3.modeling import EncoderOnlyEmbedderM3ModelForInference as M3Model
from FlagEmbedding.inference.embedder.encoder_only.m3 import M3Embedder

from client import (
    BgeM3Client,
    M3Embedding,
    SparseVector,
    colbert_score,
    compute_lexical_matching_score,
    core,
    hybrid_scores,
    score_pairs,
    to_flagembedding,
)
from client.m3 import colbert_scores, parse_weights

HIDDEN = 16
VOCAB = 60
SPECIAL = (0, 1, 2, 3)  # <s> <pad> </s> <unk>: FlagEmbedding drops their weights


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def random_text(rng: np.random.Generator, max_tokens: int) -> dict:
    """A text as the model would see it: token ids (<s> first, </s> last) and its three outputs."""
    n = int(rng.integers(1, max_tokens + 1))  # colbert vectors: tokens after <s>, </s> included
    ids = np.concatenate([[0], rng.integers(4, VOCAB, n - 1), [2]])  # repeated ids happen
    weights = np.maximum(rng.normal(0.1, 0.3, ids.size), 0).astype(np.float32)  # relu: some exactly 0
    sparse_full = np.zeros(VOCAB, np.float32)  # FlagEmbedding's scatter_reduce amax, specials zeroed
    np.maximum.at(sparse_full, ids, weights)
    sparse_full[list(SPECIAL)] = 0
    lexical = {str(i): float(sparse_full[i]) for i in np.flatnonzero(sparse_full)}
    return {"dense": _unit(rng.normal(size=HIDDEN)), "colbert": _unit(rng.normal(size=(n, HIDDEN))),
            "sparse_full": sparse_full, "lexical": lexical}


def f32(lexical_weights: dict) -> dict:
    """Lexical weights compared as the float32 numbers they are."""
    return {k: np.float32(w) for k, w in lexical_weights.items()}


def embedding(text: dict) -> M3Embedding:
    return M3Embedding(text["dense"], SparseVector.from_lexical_weights(text["lexical"]), text["colbert"])


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(7)
    queries = [random_text(rng, 6) for _ in range(9)]
    passages = [random_text(rng, 14) for _ in range(9)]
    return queries, passages


# --- scores against FlagEmbedding -----------------------------------------------------------


def test_colbert_score_equals_flagembedding(corpus):
    queries, passages = corpus
    for q in queries:
        ours = [colbert_score(q["colbert"], p["colbert"]) for p in passages]
        theirs = [float(M3Embedder.colbert_score(None, q["colbert"], p["colbert"])) for p in passages]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
        # the one-matrix-product form for many passages is the same number
        np.testing.assert_allclose(colbert_scores(q["colbert"], [p["colbert"] for p in passages]), ours,
                                   rtol=0, atol=1e-12)
    # a negative best match stays negative (no zero padding slips into the max)
    q = -np.eye(HIDDEN, dtype=np.float32)[:2]
    p = np.eye(HIDDEN, dtype=np.float32)[:3]
    assert colbert_score(q, p) == pytest.approx(float(M3Embedder.colbert_score(None, q, p))) == pytest.approx(-0.0)
    with pytest.raises(ValueError):
        colbert_score(np.zeros((0, HIDDEN)), p)


def test_lexical_matching_score_equals_flagembedding(corpus):
    queries, passages = corpus
    lq, lp = [q["lexical"] for q in queries], [p["lexical"] for p in passages]
    theirs = M3Embedder.compute_lexical_matching_score(None, lq, lp)
    np.testing.assert_allclose(compute_lexical_matching_score(lq, lp), theirs, rtol=0, atol=1e-6)
    assert compute_lexical_matching_score(lq[0], lp[0]) == pytest.approx(
        M3Embedder.compute_lexical_matching_score(None, lq[0], lp[0]), abs=1e-6)
    # a SparseVector reads lexical weights and gives back the same keys and float32 weights
    for d in lq:
        assert f32(SparseVector.from_lexical_weights(d).to_lexical_weights()) == f32(d)


class _FakeInputs(dict):
    def to(self, device):
        return self


def flagembedding_compute_score(texts: dict[str, dict], pairs, weights, batch_size=1):
    """FlagEmbedding's own M3Embedder.compute_score_single_device, its model replaced by one that
    answers the given vectors (padded as the real model pads: zero colbert rows, masked)."""
    scorer = SimpleNamespace(temperature=1.0,
                             _compute_similarity=lambda q, p: M3Model._compute_similarity(None, q, p))

    def tokenize(batch, max_length, **kwargs):
        longest = max(len(texts[t]["colbert"]) for t in batch) + 1
        mask = torch.tensor([[1] * (len(texts[t]["colbert"]) + 1) + [0] * (longest - len(texts[t]["colbert"]) - 1)
                             for t in batch])
        return _FakeInputs(texts=list(batch), attention_mask=mask)

    def model(inputs, **kwargs):
        batch = inputs["texts"]
        width = inputs["attention_mask"].shape[1] - 1
        colbert = np.zeros((len(batch), width, HIDDEN), np.float32)
        for i, t in enumerate(batch):
            colbert[i, :len(texts[t]["colbert"])] = texts[t]["colbert"]
        return {"dense_vecs": torch.from_numpy(np.stack([texts[t]["dense"] for t in batch])),
                "sparse_vecs": torch.from_numpy(np.stack([texts[t]["sparse_full"] for t in batch])),
                "colbert_vecs": torch.from_numpy(colbert)}

    # the callable model, with the scoring methods of FlagEmbedding's own model class
    model.compute_dense_score = lambda q, p: M3Model.compute_dense_score(scorer, q, p)
    model.compute_sparse_score = lambda q, p: M3Model.compute_sparse_score(scorer, q, p)
    model.compute_colbert_score = lambda q, p, q_mask: M3Model.compute_colbert_score(scorer, q, p, q_mask=q_mask)
    model.float = model.eval = lambda: None
    model.to = lambda device: None
    this = SimpleNamespace(tokenizer=tokenize, model=model, target_devices=["cpu"],
                           _convert_to_numpy=lambda t, device=None: t.cpu().numpy())
    return M3Embedder.compute_score_single_device(this, pairs, batch_size=batch_size,
                                                  weights_for_different_modes=weights, device="cpu")


@pytest.mark.parametrize("weights", [None, [0.4, 0.2, 0.4], [1.0, 0.3, 1.0], [0.0, 1.0, 0.0]])
def test_score_pairs_equals_flagembedding_compute_score(corpus, weights):
    queries, passages = corpus
    texts = {f"q{i}": q for i, q in enumerate(queries)} | {f"p{i}": p for i, p in enumerate(passages)}
    pairs = [(f"q{i}", f"p{j}") for i in range(len(queries)) for j in (i, (i + 3) % len(passages))]
    theirs = flagembedding_compute_score(texts, pairs, weights)
    ours = score_pairs([embedding(texts[q]) for q, _ in pairs], [embedding(texts[p]) for _, p in pairs], weights)
    assert set(ours) == set(theirs) == {"dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"}
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-5, err_msg=key)
    # one pair: floats, as FlagEmbedding answers a single tuple
    single = flagembedding_compute_score(texts, pairs[0], weights)
    assert set(single) == set(theirs) and all(isinstance(v, float) for v in single.values())


def test_score_pairs_with_dense_and_sparse_weighted_0(corpus):
    """Weights (0, 0, 1): ``sparse+dense`` has no weight to divide by. FlagEmbedding answers NaN for it;
    it is left out here, and ``colbert+sparse+dense`` is the ColBERT score."""
    queries, passages = corpus
    texts = {f"q{i}": q for i, q in enumerate(queries)} | {f"p{i}": p for i, p in enumerate(passages)}
    pairs = [(f"q{i}", f"p{i}") for i in range(len(queries))]
    theirs = flagembedding_compute_score(texts, pairs, [0.0, 0.0, 1.0])
    ours = score_pairs([embedding(texts[q]) for q, _ in pairs], [embedding(texts[p]) for _, p in pairs], (0, 0, 1))
    assert np.isnan(theirs.pop("sparse+dense")).all()
    assert set(ours) == set(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(ours["colbert+sparse+dense"], ours["colbert"], rtol=0, atol=1e-12)


def test_hybrid_scores_matrix_is_score_pairs_per_cell(corpus):
    queries, passages = corpus
    qs, ps = [embedding(q) for q in queries], [embedding(p) for p in passages]
    matrix = hybrid_scores(qs, ps, "0.4,0.2,0.4")
    for i, q in enumerate(qs):
        cell = score_pairs([q] * len(ps), ps, [0.4, 0.2, 0.4])["colbert+sparse+dense"]
        np.testing.assert_allclose(matrix[i], cell, rtol=0, atol=1e-9)
    for k, mode in enumerate(("dense", "sparse", "colbert")):
        one = [0.0, 0.0, 0.0]
        one[k] = 2.0
        cells = np.array([score_pairs([q] * len(ps), ps)[mode] for q in qs])
        np.testing.assert_allclose(hybrid_scores(qs, ps, one), cells, rtol=0, atol=1e-9)
    # a mode weighted 0 is never looked at: dense-only embeddings rank by dense
    dense_only = [M3Embedding(dense=e.dense) for e in qs]
    assert hybrid_scores(dense_only, [M3Embedding(dense=e.dense) for e in ps], (1, 0, 0)).shape == (9, 9)
    with pytest.raises(ValueError, match="sparse is weighted"):
        hybrid_scores(dense_only, ps, (1, 1, 0))


def test_parse_weights():
    assert parse_weights("0.4,0.2,0.4") == (0.4, 0.2, 0.4)
    assert parse_weights([1, 0, 0]) == (1.0, 0.0, 0.0)
    assert parse_weights(None) is None
    for bad in ("0.4,0.2", "a,b,c", "0,0,0", "-1,1,1", "nan,1,1"):
        with pytest.raises(ValueError):
            parse_weights(bad)


# --- output forms ------------------------------------------------------------------------


def test_flagembedding_form_and_json_round_trip(corpus):
    queries, _ = corpus
    embeddings = [embedding(q) for q in queries[:3]]
    out = to_flagembedding(embeddings)
    assert set(out) == {"dense_vecs", "lexical_weights", "colbert_vecs"}
    assert out["dense_vecs"].shape == (3, HIDDEN) and out["dense_vecs"].dtype == np.float32
    assert [f32(d) for d in out["lexical_weights"]] == [f32(q["lexical"]) for q in queries[:3]]
    assert [c.shape for c in out["colbert_vecs"]] == [(len(q["colbert"]), HIDDEN) for q in queries[:3]]
    one = to_flagembedding(embeddings[0])  # FlagEmbedding given one string
    assert one["dense_vecs"].shape == (HIDDEN,) and isinstance(one["lexical_weights"], dict)
    partial = to_flagembedding([M3Embedding(dense=e.dense) for e in embeddings])
    assert partial["lexical_weights"] is None and partial["colbert_vecs"] is None
    for e in embeddings:
        for form in (e.to_native(), e.to_m3_json()):
            back = M3Embedding.from_json(json.loads(json.dumps(form)))
            assert np.array_equal(back.dense, e.dense) and np.array_equal(back.colbert, e.colbert)
            assert back.sparse == e.sparse
    assert set(embeddings[0].to_native()) == {"dense", "sparse", "colbert"}
    assert set(embeddings[0].to_m3_json()) == {"dense_vecs", "lexical_weights", "colbert_vecs"}


# --- what is requested: a spy on the transport, in front of the real served pipeline --------


@pytest.fixture
def sent(monkeypatch):
    """Records every request the client sends to the server (model, outputs, parameters)."""
    calls = []
    original = core._Transport.infer

    async def infer(self, model, texts, outputs, parameters):
        calls.append((model, tuple(outputs), parameters))
        result = await original(self, model, texts, outputs, parameters)
        assert set(result) == set(outputs)  # only what was asked for comes back
        return result

    monkeypatch.setattr(core._Transport, "infer", infer)
    return calls


def test_only_the_needed_outputs_and_ensemble_are_requested(sent, bge_m3_server, flag_m3):
    with BgeM3Client(f"grpc://{bge_m3_server.grpc_url}", batch_size=2) as m3:
        dense = m3.encode(["a", "bb", "ccc"], return_sparse=False)
        assert sent == [("bge_m3", ("dense",), None)] * 2  # cut into requests of 2
        hidden = flag_m3.encode(["a"], return_dense=True)["dense_vecs"].shape[-1]
        assert all(e.sparse is None and e.colbert is None and e.dense.shape == (hidden,) for e in dense)
        sent.clear()

        sparse = m3.encode_queries("bb", return_dense=False, top_k=5)
        assert sent == [("bge_m3", ("indices", "values"), {"top_k": 5, "input_type": "query"})]
        assert sparse.dense is None and 0 < len(sparse.sparse.to_lexical_weights()) <= 5
        sent.clear()

        both = m3.encode(["a", "bb"], return_tokens=True)
        assert sent == [("bge_m3", ("dense", "indices", "values", "tokens"), None)]
        assert len(both[1].sparse.tokens) == len(both[1].sparse.to_lexical_weights()) > 0
        sent.clear()

        texts = ["a", "bbbb bbbb bbbb", "cc cc"]
        allm = m3.encode_corpus(texts, return_colbert_vecs=True)
        assert sent == [
            ("bge_m3_colbert", ("dense", "indices", "values", "colbert", "colbert_lengths"),
             {"input_type": "document"})] * 2
        # padding removed by colbert_lengths: each text its own rows, as FlagEmbedding's
        theirs = flag_m3.encode(texts, return_colbert_vecs=True)["colbert_vecs"]
        assert [e.colbert.shape for e in allm] == [v.shape for v in theirs]
        assert len({e.colbert.shape[0] for e in allm}) == 3  # three lengths: the requests were padded
        sent.clear()

        only_colbert = m3.encode("x", return_dense=False, return_sparse=False, return_colbert_vecs=True)
        assert sent == [("bge_m3_colbert", ("colbert", "colbert_lengths"), None)]
        assert only_colbert.dense is None and only_colbert.sparse is None
        sent.clear()

        with pytest.raises(ValueError, match="at least one"):
            m3.encode("x", return_dense=False, return_sparse=False)
        with pytest.raises(ValueError, match="input_type"):
            m3.encode("x", input_type="passage")
        assert sent == []


def test_compute_score_encodes_queries_and_passages_apart(sent, bge_m3_server):
    with BgeM3Client(f"grpc://{bge_m3_server.grpc_url}") as m3:
        scores = m3.compute_score([("q one", "passage one"), ("q2", "p2")], weights_for_different_modes=[0.4, 0.2, 0.4])
        assert [c[2]["input_type"] for c in sent] == ["query", "document"]
        assert all(c[0] == "bge_m3_colbert" for c in sent)
        assert set(scores) == {"dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"}
        assert len(scores["dense"]) == 2
        single = m3.compute_score(("q", "p"), return_colbert_vecs=False)
        assert set(single) == {"dense", "sparse", "sparse+dense"} and isinstance(single["dense"], float)
        assert sent[-1][0] == "bge_m3"


# --- served: a real tritonserver with the bge_m3 pipeline on the tiny fixture ----------------

SERVED_TEXTS = [
    "what is the capital of france",
    "Paris est la capitale de la France, célèbre pour la tour Eiffel.",
    "東京は日本の首都です", "مرحبا بالعالم", "Привет, мир", "emoji 🚀🔥 text",
    "",
    "the the the the cat cat sat sat sat",
    " ".join(["retrieval", "dense", "sparse", "colbert", "vectors", "tokens"] * 20),  # past the query length
]
QUERY_MAX_LENGTH, DOCUMENT_MAX_LENGTH = 32, 512  # tests/conftest.py's bge_m3 pipeline


@pytest.fixture(params=["http", "grpc"])
def m3_url(request, bge_m3_server):
    address = bge_m3_server.http_url if request.param == "http" else bge_m3_server.grpc_url
    return f"{request.param}://{address}"


def assert_equals_flagembedding(ours: dict, theirs: dict) -> None:
    """Two FlagEmbedding encode() results: dense and colbert within 1e-5, lexical same keys within 1e-5."""
    np.testing.assert_allclose(ours["dense_vecs"], theirs["dense_vecs"], rtol=0, atol=1e-5)
    assert len(ours["lexical_weights"]) == len(theirs["lexical_weights"])
    for got, want in zip(ours["lexical_weights"], theirs["lexical_weights"]):
        assert got.keys() == want.keys()
        assert max((abs(got[k] - float(want[k])) for k in want), default=0) <= 1e-5
    assert len(ours["colbert_vecs"]) == len(theirs["colbert_vecs"])
    for got, want in zip(ours["colbert_vecs"], theirs["colbert_vecs"]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("input_type", ["query", "document"])
def test_served_encode_equals_bgem3flagmodel(m3_url, flag_m3, input_type):
    max_length = QUERY_MAX_LENGTH if input_type == "query" else DOCUMENT_MAX_LENGTH
    theirs = flag_m3.encode(SERVED_TEXTS, batch_size=4, max_length=max_length,
                            return_dense=True, return_sparse=True, return_colbert_vecs=True)
    with BgeM3Client(m3_url, batch_size=4) as m3:  # several requests, in flight together
        embeddings = m3.encode(SERVED_TEXTS, input_type=input_type, return_colbert_vecs=True)
        assert_equals_flagembedding(to_flagembedding(embeddings), theirs)
        # the same numbers whatever was asked alongside, and one text alone
        dense_only = m3.encode(SERVED_TEXTS, input_type=input_type, return_sparse=False)
        np.testing.assert_allclose(np.stack([e.dense for e in dense_only]), theirs["dense_vecs"], rtol=0, atol=1e-5)
        one = m3.encode(SERVED_TEXTS[1], input_type=input_type, return_colbert_vecs=True, return_tokens=True)
        assert_equals_flagembedding(to_flagembedding([one]), {k: v[1:2] for k, v in theirs.items()})
        assert len(one.sparse.tokens) == len(one.sparse) and all(one.sparse.tokens)


def test_served_compute_score_equals_bgem3flagmodel(m3_url, flag_m3):
    pairs = [(SERVED_TEXTS[0], SERVED_TEXTS[1]), (SERVED_TEXTS[2], SERVED_TEXTS[3]),
             (SERVED_TEXTS[7], SERVED_TEXTS[8]), (SERVED_TEXTS[5], SERVED_TEXTS[5])]
    with BgeM3Client(m3_url) as m3:
        for weights in (None, [0.4, 0.2, 0.4]):
            # batch_size=1: FlagEmbedding pads a batch's passages with zero ColBERT vectors, which can
            # win a max over negative dot products; one pair at a time it scores exactly colbert_score.
            theirs = flag_m3.compute_score(pairs, batch_size=1, max_query_length=QUERY_MAX_LENGTH,
                                           max_passage_length=DOCUMENT_MAX_LENGTH,
                                           weights_for_different_modes=weights)
            ours = m3.compute_score(pairs, weights_for_different_modes=weights)
            assert set(ours) == set(theirs)
            for key in theirs:
                np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=1e-5, err_msg=key)


def test_served_compute_score_with_colbert_alone(bge_m3_server):
    pairs = [(SERVED_TEXTS[0], SERVED_TEXTS[1]), (SERVED_TEXTS[2], SERVED_TEXTS[3])]
    with BgeM3Client(f"grpc://{bge_m3_server.grpc_url}") as m3:
        scores = m3.compute_score(pairs, weights_for_different_modes=[0, 0, 1])
    assert "sparse+dense" not in scores
    np.testing.assert_allclose(scores["colbert+sparse+dense"], scores["colbert"], rtol=0, atol=1e-12)


# --- served: the command line ------------------------------------------------------------


def test_cli_embed_bge_m3(capsys, bge_m3_server, flag_m3):
    from client.cli import main

    url = f"grpc://{bge_m3_server.grpc_url}"
    texts = SERVED_TEXTS[:2]
    # the kind of pipeline is read from the model's metadata
    assert main(["embed", "--url", url, "--model", "bge_m3", "--format", "m3", "--colbert",
                 "--input-type", "document", *texts]) == 0
    out = json.loads(capsys.readouterr().out)
    theirs = flag_m3.encode(texts, max_length=DOCUMENT_MAX_LENGTH, return_dense=True, return_sparse=True,
                            return_colbert_vecs=True)
    assert_equals_flagembedding({"dense_vecs": np.array(out["dense_vecs"]), "lexical_weights": out["lexical_weights"],
                                 "colbert_vecs": [np.array(c) for c in out["colbert_vecs"]]}, theirs)

    assert main(["embed", "--url", url, "--model", "bge_m3", "--format", "native", "--no-dense", texts[0]]) == 0
    native = json.loads(capsys.readouterr().out)
    assert list(native[0]) == ["sparse"] and set(native[0]["sparse"]) == {"indices", "values", "tokens"}

    assert main(["embed", "--url", url, "--model", "bge_m3", "--colbert", "--show", "3", texts[0]]) == 0
    human = capsys.readouterr().out.splitlines()
    assert human[0] == texts[0] and human[1].split()[0] == "dense" and human[2].split()[0] == "colbert"
    assert human[3].strip() == "sparse" and len(human) == 8

    assert main(["embed", "--url", url, "--model", "bge_m3", "--format", "tei", "x"]) == 1
    assert "--format tei is for SPLADE pipelines" in capsys.readouterr().err


def test_cli_encode_and_evaluate_bge_m3(capsys, tmp_path, bge_m3_server):
    from pathlib import Path

    from client.cli import main
    from client.corpus import load_beir, read_jsonl
    from client.evaluate import measure_run

    url = f"grpc://{bge_m3_server.grpc_url}"
    beir = Path(__file__).parent / "fixtures" / "beir_tiny"
    out = tmp_path / "vectors.jsonl"
    assert main(["encode", "--url", url, "--model", "bge_m3", "--input", str(beir / "corpus.jsonl"),
                 "--output", str(out), "--id-field", "_id", "--text-field", "title,text", "--colbert",
                 "--progress", "off"]) == 0
    capsys.readouterr()
    lines = [obj for _, obj in read_jsonl(out)]
    dataset = load_beir(beir)
    assert [line["id"] for line in lines] == list(dataset.corpus)
    assert set(lines[0]) == {"id", "dense", "sparse", "colbert"}
    docs = [M3Embedding.from_json(line) for line in lines]

    run_file = tmp_path / "run.trec"
    assert main(["evaluate", "--url", url, "--model", "bge_m3", "--dataset", str(beir), "--score", "hybrid",
                 "--weights", "0.4,0.2,0.4", "--json", "--progress", "off", "--run", str(run_file)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["score"] == "hybrid" and result["weights"] == [0.4, 0.2, 0.4]
    assert set(result["metrics"]) == {"nDCG@10", "MRR@10", "Recall@100"}
    # the run is the brute-force hybrid ranking of the client's own vectors, measured by ir-measures
    with BgeM3Client(url) as m3:
        queries = m3.encode_queries(list(dataset.queries.values()), return_colbert_vecs=True)
    matrix = hybrid_scores(queries, docs, (0.4, 0.2, 0.4))
    run = {}
    for qid, row in zip(dataset.queries, matrix):
        run[qid] = {doc: float(score) for doc, score in zip(dataset.corpus, row)}
    expected = measure_run(dataset.qrels, run)
    for name, value in expected.items():
        assert result["metrics"][name] == pytest.approx(value, abs=1e-6)
    best = {line.split()[0]: line.split()[2] for line in run_file.read_text().splitlines() if line.split()[3] == "1"}
    assert best == {qid: max(docs_, key=docs_.get) for qid, docs_ in run.items()}

    for score in ("dense", "sparse", "colbert"):
        assert main(["evaluate", "--url", url, "--model", "bge_m3", "--dataset", str(beir), "--score", score,
                     "--json", "--progress", "off"]) == 0
        assert json.loads(capsys.readouterr().out)["score"] == score
    assert main(["evaluate", "--url", url, "--model", "bge_m3", "--dataset", str(beir), "--score", "dense",
                 "--weights", "1,0,0", "--progress", "off"]) == 1
    assert "weights apply to the hybrid score" in capsys.readouterr().err
