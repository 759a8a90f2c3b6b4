"""Hybrid retrieval in a real engine (Milvus Lite: the native Milvus engine) with vectors from a real
tritonserver: ``python -m client index`` (resumable, refusals before any write), ``search`` /
``evaluate`` ``--retriever`` / ``--fusion``, each retriever's scores against an independent
computation (Lucene's BM25 formula, the client's own vectors, FlagEmbedding's formulas), and
one-line engine errors."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import ir_measures
import numpy as np
import pytest
import Stemmer

from client import BgeM3Client, SpladeClient
from client.cli import main
from client.corpus import load_beir
from client.formats import SparseVector
from client.engine import Engine, EngineError, Request
from client.m3 import colbert_scores, score_pairs
from client.scoring import SparseIndex
from tests.conftest import ROOT, free_port

BEIR = Path(__file__).parent / "fixtures" / "beir_tiny"
QUERIES = ["who wrote hamlet", "tallest mountain in the world", "planet with rings", "capital of france"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def search(capsys, url: str, engine: Path, *args: str) -> list[dict]:
    code, out, err = cli(capsys, "search", "--url", url, "--engine", str(engine), "--json", "-k", "40", *args,
                         *QUERIES)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def splade_index(server, tmp_path_factory):
    """beir_tiny indexed by the splade pipeline into a Milvus Lite file (through the CLI)."""
    url = f"grpc://{server.grpc_url}"
    engine = tmp_path_factory.mktemp("engine") / "milvus.db"
    code = main(["index", "--url", url, "--engine", str(engine), "--input", str(BEIR), "--progress", "off"])
    assert code == 0
    return url, engine


def test_index_reports_and_a_second_run_adds_nothing(capsys, splade_index):
    url, engine = splade_index
    code, out, _ = cli(capsys, "index", "--url", url, "--engine", str(engine), "--input", str(BEIR))
    assert code == 0
    assert out.startswith("indexed 0 documents") and "40 skipped" in out and "40 documents in collection 'splade'" in out


def test_sparse_retriever_scores_are_the_dot_products(capsys, splade_index):
    url, engine = splade_index
    dataset = load_beir(BEIR)
    with SpladeClient(url) as c:
        index = SparseIndex(list(dataset.corpus), c.encode_corpus(list(dataset.corpus.values())))
        queries = c.encode_queries(QUERIES)
    for answer, query in zip(search(capsys, url, engine, "--retriever", "sparse"), queries):
        expected = index.search(query, 40)
        assert [h["id"] for h in answer["hits"]] == [h.id for h in expected]
        assert [h["score"] for h in answer["hits"]] == pytest.approx([h.score for h in expected], rel=1e-5, abs=2e-6)


# Lucene's English stop words, the list behind the Milvus analyzer's "_english_".
ENGLISH_STOP_WORDS = set("a an and are as at be but by for if in into is it no not of on or such that the their then "
                         "there these they this to was will with".split())


def test_bm25_retriever_is_the_engines_english_bm25(capsys, splade_index):
    """The engine's BM25 against Lucene's formula over an independent analysis: words, lowercase,
    Snowball English stems (PyStemmer), then Lucene's English stop words."""
    url, engine = splade_index
    dataset = load_beir(BEIR)
    stemmer = Stemmer.Stemmer("english")

    def analyse(text: str) -> list[str]:
        return [t for t in stemmer.stemWords(re.findall(r"\w+", text.lower())) if t not in ENGLISH_STOP_WORDS]

    docs = {i: Counter(analyse(t)) for i, t in dataset.corpus.items()}
    lengths = {i: sum(c.values()) for i, c in docs.items()}
    avgdl, n = sum(lengths.values()) / len(docs), len(docs)
    k1, b = 1.2, 0.75
    for answer, query in zip(search(capsys, url, engine, "--retriever", "bm25"), QUERIES):
        terms = set(analyse(query))
        theirs = {}
        for i, tf in docs.items():
            score = 0.0
            for t in terms & set(tf):
                df = sum(t in c for c in docs.values())
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                # Milvus keeps the (k1 + 1) factor Lucene 8 dropped.
                score += idf * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * lengths[i] / avgdl))
            if score > 0:
                theirs[i] = score
        ours = {h["id"]: h["score"] for h in answer["hits"]}
        assert ours and ours == pytest.approx(theirs, rel=1e-5, abs=2e-6), query


def test_hybrid_fusions_combine_the_single_retrievers(capsys, splade_index):
    url, engine = splade_index
    bm25 = search(capsys, url, engine, "--retriever", "bm25")
    sparse = search(capsys, url, engine, "--retriever", "sparse")
    rrf = search(capsys, url, engine, "--fusion", "rrf")
    weights = ("--weights", "bm25=0.3,sparse=0.7")
    fused = {n: search(capsys, url, engine, "--fusion", "weighted", "--normalize", n, *weights)
             for n in ("minmax", "none", "arctan")}
    assert rrf[0]["retriever"] == "hybrid bm25+sparse (rrf)"
    assert fused["minmax"][0]["retriever"] == "hybrid bm25+sparse (weighted minmax bm25=0.3,sparse=0.7)"
    norms = {"minmax": None, "none": (lambda s: s, lambda s: s),
             "arctan": (lambda s: 2 * math.atan(s) / math.pi, lambda s: 0.5 + math.atan(s) / math.pi)}
    for i, (b, s, r) in enumerate(zip(bm25, sparse, rrf)):
        ranks = [{h["id"]: rank for rank, h in enumerate(x["hits"], 1)} for x in (b, s)]
        expected_rrf = {d: sum(1 / (60 + rk[d]) for rk in ranks if d in rk) for d in set(ranks[0]) | set(ranks[1])}
        assert {h["id"]: h["score"] for h in r["hits"]} == pytest.approx(expected_rrf, abs=1e-6)
        scores = [{h["id"]: h["score"] for h in x["hits"]} for x in (b, s)]
        for name, norm in norms.items():
            if norm is None:  # min-max over each retriever's candidates, per query
                low_high = [(min(x.values()), max(x.values())) for x in scores]
                norm = tuple((lambda s, lo=lo, hi=hi: (s - lo) / (hi - lo) if hi > lo else 1.0) for lo, hi in low_high)
            expected = {d: 0.3 * (norm[0](scores[0][d]) if d in scores[0] else 0)
                        + 0.7 * (norm[1](scores[1][d]) if d in scores[1] else 0)
                        for d in set(scores[0]) | set(scores[1])}
            got = {h["id"]: h["score"] for h in fused[name][i]["hits"]}
            assert got == pytest.approx(expected, abs=1e-5), name


def test_evaluate_writes_the_run_and_a_table_of_retrievers(tmp_path, splade_index):
    url, engine = splade_index
    run_file = tmp_path / "run.trec"
    result = subprocess.run([sys.executable, "-m", "client", "evaluate", "--url", url, "--engine", str(engine),
                             "--dataset", str(BEIR), "--retriever", "hybrid", "--json", "--run", str(run_file)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["collection"] == "splade_beir_tiny"
    assert report["retriever"] == "hybrid bm25+sparse (weighted minmax bm25=0.5,sparse=0.5)"
    assert list(report["table"]) == ["bm25", "sparse", "hybrid bm25+sparse (rrf)",
                                     "hybrid bm25+sparse (weighted minmax bm25=0.5,sparse=0.5)"]
    qrels = load_beir(BEIR).qrels
    run = list(ir_measures.read_trec_run(str(run_file)))
    theirs = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.R @ 100], qrels, run)
    assert report["metrics"]["nDCG@10"] == pytest.approx(theirs[ir_measures.nDCG @ 10], abs=1e-9)
    assert report["metrics"]["Recall@100"] == pytest.approx(theirs[ir_measures.R @ 100], abs=1e-9)
    # Observed: about 0.99 nDCG@10 for every row on this easy fixture.
    assert all(row["nDCG@10"] > 0.85 for row in report["table"].values())


def test_mismatched_collections_are_refused_before_any_write(capsys, tmp_path, splade_index, bge_m3_server):
    url, engine = splade_index
    m3_url = f"grpc://{bge_m3_server.grpc_url}"
    code, _, err = cli(capsys, "index", "--url", m3_url, "--model", "bge_m3", "--engine", str(engine),
                       "--collection", "splade", "--input", str(BEIR))
    assert code == 1
    assert err.strip() == (f"error: collection 'splade' at {engine} holds vectors of pipeline 'splade' (splade); "
                           "this run uses 'bge_m3' (bge_m3): choose another --collection, or --recreate it")
    # A dense size unlike the collection's (another model under the same name).
    other = tmp_path / "other.db"
    with Engine(str(other), "bge_m3", pipeline="bge_m3", kind="bge_m3") as e, BgeM3Client(m3_url) as m3:
        first = m3.encode(["a document"])[0]
        e.write(["x"], ["a document"], [first.sparse], [np.zeros(first.dense.size + 1, np.float32)])
        dim = first.dense.size
    code, _, err = cli(capsys, "index", "--url", m3_url, "--model", "bge_m3", "--engine", str(other),
                       "--input", str(BEIR))
    assert code == 1 and err.strip().startswith(
        f"error: collection 'bge_m3' at {other} holds dense vectors of size {dim + 1}; this pipeline gives {dim}")
    # A collection this client did not write.
    from pymilvus import DataType, MilvusClient

    foreign = MilvusClient(str(tmp_path / "foreign.db"))
    schema = foreign.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=8)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    foreign.create_collection("splade", schema=schema)
    foreign.close()
    code, _, err = cli(capsys, "index", "--url", url, "--engine", str(tmp_path / "foreign.db"), "--input", str(BEIR),
                       "--recreate")
    assert code == 1 and "was not written by this client" in err
    for path, name, n in ((engine, "splade", 40), (other, "bge_m3", 1)):
        with Engine(str(path), name, pipeline=name, kind=name) as e:
            assert e.count() == n  # nothing was written


def test_bad_retriever_options_are_one_line(capsys, splade_index):
    url, engine = splade_index
    for args, expected in (
            (["--retriever", "dense"], "error: retriever 'dense' needs a BGE-M3 pipeline; a splade pipeline has "
                                       "bm25, sparse and hybrid"),
            (["--weights", "bm25=1,dense=1"], "error: --weights: unknown retriever 'dense' for a splade pipeline"),
            (["--weights", "bm25=-1"], "error: --weights: bm25 must be a finite number >= 0"),
            (["--weights", "bm25=0,sparse=0"], "error: --weights: give at least one retriever a weight above 0"),
            (["--collection", "nope"], f"error: collection 'nope' at {engine} does not exist: run python -m client "
                                       "index first")):
        code, out, err = cli(capsys, "search", "--url", url, "--engine", str(engine), *args, "a query")
        assert code == 1 and not out and err.strip().startswith(expected), err


@pytest.mark.parametrize("command", ["index", "search"])
def test_an_unreachable_engine_is_one_line(server, command):
    down = f"http://127.0.0.1:{free_port()}"
    args = ["--input", str(BEIR)] if command == "index" else ["a query"]
    result = subprocess.run([sys.executable, "-m", "client", command, "--url", f"grpc://{server.grpc_url}",
                             "--engine", down, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the search engine at {down}: "), result.stderr


def test_a_file_open_in_another_process_is_one_line(server, tmp_path):
    engine = tmp_path / "milvus.db"
    args = [sys.executable, "-m", "client", "search", "--url", f"grpc://{server.grpc_url}", "--engine", str(engine),
            "a query"]
    with Engine(str(engine), "splade", pipeline="splade", kind="splade") as held:
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"error: engine file {engine} is open in another process (Milvus Lite runs one process per file): "
            "wait for it to end, or choose another --engine"]
        assert held.count() == 0  # the holder's engine still answers
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)  # released on close
    assert result.stderr.strip() == (f"error: collection 'splade' at {engine} does not exist: run python -m client "
                                     "index first")


def test_a_lost_engine_process_is_one_line(tmp_path):
    engine = tmp_path / "milvus.db"
    with Engine(str(engine), "splade", pipeline="splade", kind="splade") as e:
        e.write(["a"], ["a document"], [SparseVector(np.array([7]), np.array([1.0], np.float32))])
        # Milvus Lite's engine: the child process running the milvus binary on this file.
        children = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid)[1:2] == [str(engine)]]
        assert len(children) == 1 and _cmdline(children[0])[0].endswith("/milvus")
        os.kill(children[0], signal.SIGKILL)
        while len(_cmdline(children[0])) > 1:  # a zombie's cmdline is empty: it has died
            time.sleep(0.05)
        with pytest.raises(EngineError) as caught:
            e.count()
    assert str(caught.value).startswith(f"search engine at {engine}: count failed: Milvus Lite's engine process "
                                        "ended (exit status -9)")


def _cmdline(pid: int | str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _progress_reader(process: subprocess.Popen) -> tuple[threading.Event, list[int]]:
    """Follow tqdm's bar on stderr; set the event once ``at_least[0]`` documents are counted."""
    reached, state = threading.Event(), [0, 0]  # [count seen, threshold]

    def read() -> None:
        buffer = ""
        while chunk := process.stderr.read(64):
            buffer = (buffer + chunk)[-2000:]
            counts = re.findall(r"\| *(\d+)/\d+ \[", buffer)
            if counts:
                state[0] = int(counts[-1])
                if state[1] and state[0] >= state[1]:
                    reached.set()

    threading.Thread(target=read, daemon=True).start()
    return reached, state


def test_interrupted_index_resumes_without_duplicates_or_gaps(tmp_path, server):
    n = 1500
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"doc-{i}", "text": f"passage {i} about topic {i % 37}"}) + "\n"
                              for i in range(n)))
    engine = tmp_path / "milvus.db"
    # One text per request and small writes: each interruption lands mid-run.
    args = [sys.executable, "-m", "client", "index", "--url", f"grpc://{server.grpc_url}", "--engine", str(engine),
            "--input", str(corpus), "--batch-size", "1", "--max-in-flight", "1", "--write-batch", "8",
            "--progress", "on"]

    def start(at_least: int) -> subprocess.Popen:
        p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        reached, state = _progress_reader(p)
        state[1] = at_least
        assert reached.wait(120), f"no progress to {at_least}: {state[0]}"
        return p

    first = start(200)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = start(400)
    second.send_signal(signal.SIGINT)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 130
    third = subprocess.run(args[:-1] + ["off"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    skipped = int(re.search(r"(\d+) skipped", third.stdout).group(1))
    assert 400 <= skipped < n and f"{n} documents in collection" in third.stdout
    with Engine(str(engine), "splade", pipeline="splade", kind="splade") as e:
        ids = [f"doc-{i}" for i in range(n)]
        assert e.count() == n and e.present(ids) == set(ids)  # every id once: no duplicates, no gaps
        # A resumed document holds its own text's vector.
        texts = e.texts(["doc-0", "doc-1499"])
        with SpladeClient(f"grpc://{server.grpc_url}") as c:
            vectors = c.encode([texts["doc-0"], texts["doc-1499"]])
        hits = e.search([Request("sparse", [{int(i): float(v) for i, v in zip(x.indices, x.values)}
                                            for x in vectors])], limit=1)
        assert [h[0][0] for h in hits] == ["doc-0", "doc-1499"]


def test_bge_m3_retrievers_in_the_engine(capsys, tmp_path, bge_m3_server):
    """The tiny random BGE-M3: functional checks (its rankings mean nothing)."""
    url = f"grpc://{bge_m3_server.grpc_url}"
    engine = tmp_path / "milvus.db"
    assert cli(capsys, "index", "--url", url, "--model", "bge_m3", "--engine", str(engine), "--input", str(BEIR))[0] == 0
    dataset = load_beir(BEIR)
    ids = list(dataset.corpus)
    with BgeM3Client(url) as m3:
        docs = m3.encode(list(dataset.corpus.values()), input_type="document", return_colbert_vecs=True)
        queries = m3.encode(QUERIES, input_type="query", return_colbert_vecs=True)
    args = ("--model", "bge_m3", "--candidates", "40")
    dense = search(capsys, url, engine, *args, "--retriever", "dense")
    colbert = search(capsys, url, engine, *args, "--retriever", "colbert")
    weighted = search(capsys, url, engine, *args)  # the default: weighted as compute_score
    dense_matrix = np.stack([q.dense for q in queries]) @ np.stack([d.dense for d in docs]).T
    for q, answer_d, answer_c, answer_w in zip(queries, dense, colbert, weighted):
        hits = answer_d["hits"]
        assert len(hits) == 40
        row = dense_matrix[QUERIES.index(answer_d["query"])]
        assert [h["score"] for h in hits] == pytest.approx([row[ids.index(h["id"])] for h in hits], abs=1e-5)
        late = dict(zip(ids, colbert_scores(q.colbert, [d.colbert for d in docs])))
        scores = [h["score"] for h in answer_c["hits"]]
        assert scores == sorted(scores, reverse=True)
        assert scores == pytest.approx([late[h["id"]] for h in answer_c["hits"]], abs=1e-5)
        assert answer_w["retriever"] == "hybrid sparse+dense+colbert (weighted none sparse=0.2,dense=0.4,colbert=0.4)"
        # BGE-M3's defaults: FlagEmbedding's compute_score (colbert+sparse+dense) of each hit.
        hit_docs = [docs[ids.index(h["id"])] for h in answer_w["hits"]]
        expected = score_pairs([q] * len(hit_docs), hit_docs, (0.4, 0.2, 0.4))["colbert+sparse+dense"]
        assert [h["score"] for h in answer_w["hits"]] == pytest.approx(expected, abs=1e-5)
        assert len(answer_w["hits"]) == 40 and expected == sorted(expected, reverse=True)

    code, out, err = cli(capsys, "evaluate", "--url", url, "--model", "bge_m3", "--engine", str(engine),
                         "--dataset", str(BEIR), "--retriever", "colbert", "--json", "--progress", "off")
    assert code == 0, err
    report = json.loads(out)
    assert report["retriever"] == "colbert" and list(report["table"]) == [
        "bm25", "sparse", "dense", "colbert", "hybrid sparse+dense+colbert (rrf)",
        "hybrid sparse+dense+colbert (weighted none sparse=0.2,dense=0.4,colbert=0.4)"]


# Ids as real corpora have them (BEIR dbpedia-entity: <dbpedia:Schindler's_List>): quotes and backslashes.
AWKWARD_IDS = ["<dbpedia:Schindler's_List>", 'say "hi"', "back\\slash", "end\\", "mix'\"\\", "\\'", "plain"]


def test_ids_with_quotes_and_backslashes_index_search_and_rescore(capsys, tmp_path, bge_m3_server):
    url = f"grpc://{bge_m3_server.grpc_url}"
    texts = list(load_beir(BEIR).corpus.values())[:len(AWKWARD_IDS)]
    corpus, engine = tmp_path / "corpus.jsonl", tmp_path / "milvus.db"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(AWKWARD_IDS, texts)))
    index = ("index", "--url", url, "--model", "bge_m3", "--engine", str(engine), "--input", str(corpus))
    code, out, err = cli(capsys, *index)
    assert code == 0, err
    assert out.startswith(f"indexed {len(AWKWARD_IDS)} documents")
    code, out, err = cli(capsys, *index)  # resumed: every id found in the collection
    assert code == 0 and out.startswith("indexed 0 documents") and f"{len(AWKWARD_IDS)} skipped" in out, err
    with BgeM3Client(url) as m3:
        docs = m3.encode_corpus(texts, return_colbert_vecs=True)
        queries = m3.encode_queries(QUERIES, return_colbert_vecs=True)
    args = ("--model", "bge_m3", "--candidates", "40")
    for retriever in ("sparse", "dense", "colbert"):
        answers = search(capsys, url, engine, *args, "--retriever", retriever)
        assert all({h["id"] for h in a["hits"]} <= set(AWKWARD_IDS) and a["hits"] for a in answers), retriever
    # ColBERT re-scoring fetched every candidate's text by its id, and scored it.
    for q, answer in zip(queries, answers):
        assert {h["id"] for h in answer["hits"]} == set(AWKWARD_IDS)
        late = dict(zip(AWKWARD_IDS, colbert_scores(q.colbert, [d.colbert for d in docs])))
        assert [h["score"] for h in answer["hits"]] == pytest.approx([late[h["id"]] for h in answer["hits"]],
                                                                      abs=1e-5)
    with Engine(str(engine), "bge_m3", pipeline="bge_m3", kind="bge_m3") as e:
        assert e.count() == len(AWKWARD_IDS) and e.present(AWKWARD_IDS + ["absent"]) == set(AWKWARD_IDS)
        assert e.texts(AWKWARD_IDS) == dict(zip(AWKWARD_IDS, texts))
        # Written again: replaced, not doubled.
        e.write(AWKWARD_IDS[-1:], ["replaced"], [docs[0].sparse], [docs[0].dense])
        assert e.count() == len(AWKWARD_IDS) and e.texts(AWKWARD_IDS[-1:]) == {AWKWARD_IDS[-1]: "replaced"}
        with pytest.raises(EngineError, match="holds a line break"):
            e.write(["two\nlines"], ["a text"], [docs[0].sparse], [docs[0].dense])


def test_index_skips_a_refused_record(capsys, tmp_path, server):
    url, engine = f"grpc://{server.grpc_url}", tmp_path / "milvus.db"
    corpus = tmp_path / "corpus.jsonl"
    records = [("a", "paris is the capital of france"), ("big", "word " * 14000), ("c", "rome is in italy")]
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in records))
    code, out, err = cli(capsys, "index", "--url", url, "--engine", str(engine), "--input", str(corpus),
                         "--progress", "off")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{corpus}: record 'big' skipped: "), err
    assert out.startswith("indexed 2 documents") and "1 refused by the server" in out
    with Engine(str(engine), "splade", pipeline="splade", kind="splade") as e:
        assert e.count() == 2 and e.present(["a", "big", "c"]) == {"a", "c"}
    code, _, err = cli(capsys, "index", "--url", url, "--engine", str(engine), "--input", str(corpus),
                       "--on-error", "stop", "--progress", "off")
    assert code == 1 and err.strip().splitlines() == [
        "error: record 'big' was refused by the server: " + lines[0].split(" skipped: ", 1)[1]]


def test_colbert_alone_in_a_hybrid_is_one_line(capsys, tmp_path, bge_m3_server):
    """ColBERT re-scores the candidates the engine's retrievers find: weighted alone it has none."""
    url, engine = f"grpc://{bge_m3_server.grpc_url}", tmp_path / "milvus.db"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                              for i, t in enumerate(list(load_beir(BEIR).corpus.values())[:3])))
    assert cli(capsys, "index", "--url", url, "--model", "bge_m3", "--engine", str(engine), "--input", str(corpus))[0] == 0
    for fusion in ("rrf", "weighted"):
        code, out, err = cli(capsys, "search", "--url", url, "--model", "bge_m3", "--engine", str(engine),
                             "--retriever", "hybrid", "--fusion", fusion, "--weights", "colbert=1", "a query")
        assert code == 1 and not out, (fusion, out)
        assert err.strip().splitlines() == [
            "error: --weights: colbert re-scores the candidates of bm25, sparse or dense: give one of them a "
            "weight above 0 too (or --retriever colbert)"], fusion
