"""Queries are encoded as queries everywhere: in-memory ``evaluate``, ``search --vectors`` and the
engine's retrievers, on asymmetric models (tests/test_sides.py's fixtures, served side by side).

The router fixture is the sharpest case: its query side is a static weight table with no
transformer and no [CLS]/[SEP], its document side an MLM, so a query encoded on the wrong side
gets different terms and different weights, and every figure computed from it changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.cli import main
from client.corpus import load_beir
from tests import triton
from tests.conftest import SIDES_PIPELINES

PIPELINES = SIDES_PIPELINES
BEIR = Path(__file__).parent / "fixtures" / "beir_tiny"
VOCAB = 30522




def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def side_vectors(server, pipeline: str, texts: list[str], side: str) -> np.ndarray:
    """[n, vocab] vectors of one side, asked of the server with plain tritonclient (not the client under test)."""
    c = triton.client("grpc", server)
    rows = []
    for start in range(0, len(texts), 64):
        out = triton.encode("grpc", c, texts[start:start + 64], outputs=("indices", "values"), model=pipeline,
                            parameters={"input_type": side})
        rows.append(triton.densify(out["indices"], out["values"], VOCAB))
    return np.concatenate(rows)


def expected_scores(server, pipeline: str, queries: list[str], side: str = "query") -> np.ndarray:
    """[queries, documents] dot products: queries encoded on ``side``, documents as documents."""
    corpus = load_beir(BEIR).corpus
    docs = side_vectors(server, pipeline, list(corpus.values()), "document")
    return side_vectors(server, pipeline, queries, side).astype(np.float64) @ docs.T.astype(np.float64)


def read_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, {})[doc] = float(score)
    return run


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_in_memory_evaluate_ranks_by_query_side_vectors(capsys, tmp_path, sides_server, pipeline):
    """Each query's run is its query-side vector's dot products with the documents' document-side
    vectors; the document side would give other scores (so this fails if queries were encoded as documents)."""
    run_file = tmp_path / "run.trec"
    code, out, err = cli(capsys, "evaluate", "--url", f"grpc://{sides_server.grpc_url}", "--model", pipeline,
                         "--dataset", str(BEIR), "--json", "--run", str(run_file), "--progress", "off")
    assert code == 0, err
    dataset = load_beir(BEIR)
    qids, doc_ids = list(dataset.queries), list(dataset.corpus)
    queries = [dataset.queries[q] for q in qids]
    right = expected_scores(sides_server, pipeline, queries, "query")
    wrong = expected_scores(sides_server, pipeline, queries, "document")
    assert np.abs(right - wrong).max() > 1e-2  # the sides differ: the check below has teeth
    run = read_run(run_file)  # a query that matched nothing has no line
    assert set(run) <= set(qids) and run
    for qid, row in zip(qids, right):
        expected = {doc_ids[i]: row[i] for i in np.flatnonzero(row > 0)}
        assert run.get(qid, {}) == pytest.approx(expected, rel=1e-4, abs=1e-5), qid


def test_search_vectors_encodes_queries_as_queries(capsys, tmp_path, sides_server):
    url = f"grpc://{sides_server.grpc_url}"
    vectors = tmp_path / "vectors.jsonl"
    code, _, err = cli(capsys, "encode", "--url", url, "--model", "router", "--input", str(BEIR / "corpus.jsonl"),
                       "--output", str(vectors), "--id-field", "_id", "--text-field", "title,text",
                       "--progress", "off")
    assert code == 0, err
    queries = ["tallest mountain in the world", "who wrote hamlet"]
    code, out, err = cli(capsys, "search", "--url", url, "--model", "router", "--vectors", str(vectors), "--json",
                         "-k", "40", *queries)
    assert code == 0, err
    doc_ids = list(load_beir(BEIR).corpus)
    for answer, row in zip((json.loads(line) for line in out.splitlines()),
                           expected_scores(sides_server, "router", queries)):
        expected = {doc_ids[i]: row[i] for i in np.flatnonzero(row > 0)}
        assert {h["id"]: h["score"] for h in answer["hits"]} == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_in_memory_and_engine_evaluate_give_the_same_sparse_figures(capsys, tmp_path, sides_server):
    url = f"grpc://{sides_server.grpc_url}"
    memory_run, engine_run = tmp_path / "memory.trec", tmp_path / "engine.trec"
    code, out, err = cli(capsys, "evaluate", "--url", url, "--model", "router", "--dataset", str(BEIR), "--json",
                         "--run", str(memory_run), "--progress", "off")
    assert code == 0, err
    memory = json.loads(out)
    code, out, err = cli(capsys, "evaluate", "--url", url, "--model", "router", "--dataset", str(BEIR), "--json",
                         "--engine", str(tmp_path / "milvus.db"), "--retriever", "sparse", "--run", str(engine_run),
                         "--progress", "off")
    assert code == 0, err
    engine = json.loads(out)
    assert engine["retriever"] == "sparse"
    assert engine["metrics"] == pytest.approx(memory["metrics"], abs=1e-9)
    # Not just the same averages: the same documents with the same scores for every query.
    ours, theirs = read_run(memory_run), read_run(engine_run)
    assert set(ours) == set(theirs)
    for qid in ours:
        assert theirs[qid] == pytest.approx(ours[qid], rel=1e-5, abs=2e-6), qid
