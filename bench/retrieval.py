"""Hybrid retrieval figures behind docs/retrieval.md (figures, never assertions).

    python -m bench.retrieval quality --url grpc://127.0.0.1:8001 --fixture build/finetune/stdlib
    python -m bench.retrieval scale --url grpc://127.0.0.1:8001 --docs 10000,100000
    python -m bench.retrieval latency --url grpc://127.0.0.1:8001 --docs 10000,100000

``quality``: the real-text fixture of docs/finetuning.md (``python -m train.fixture``), indexed
into the engine by the served ``splade`` pipeline. The hybrid's weights (BM25's weight, the sparse one
1 minus it) are swept for each normalisation of the weighted fusion on 400 of the fixture's
*training* queries (their documents are in the same corpus); then every retriever alone, RRF,
and each normalisation at its best weight are measured on the 400 held-out queries
(ir-measures, as ``evaluate``).

``scale``: synthetic documents (20-80 words drawn from the fixture's vocabulary by their
frequency), ``--unique`` of them encoded by the server once (larger sizes repeat them under new
ids) and written into a fresh collection per size: write throughput, size on disk per
document, and per-query latency (p50/p99) of each retriever in the engine (queries already
encoded) and end to end (hybrid, the query encoded by Triton), against the in-memory
:class:`client.scoring.SparseIndex`. ``latency``: the end-to-end figures alone again, on the
collections ``scale`` left in ``--workdir``.
Every run records the CPU and the load average beside its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import numpy as np

from client import SpladeClient
from client.corpus import load_beir, read_jsonl
from client.engine import Engine, Request
from client.evaluate import measure_run
from client.retrieval import NORMALIZATIONS, Retriever, index_documents
from client.scoring import SparseIndex

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def _run(retriever: Retriever, queries: dict[str, str], depth: int = 100) -> dict[str, dict[str, float]]:
    qids = list(queries)
    run = {}
    for start in range(0, len(qids), 64):
        chunk = qids[start:start + 64]
        for qid, hits in zip(chunk, retriever.search([queries[q] for q in chunk], depth)):
            run[qid] = dict(hits)
    return run


def quality(args: argparse.Namespace) -> dict:
    fixture = Path(args.fixture)
    heldout = load_beir(fixture / "heldout")
    # Tuning queries: training pairs i -> corpus document t<i> (train.fixture's ids).
    tune_queries, tune_qrels = {}, {}
    for number, obj in read_jsonl(fixture / "train.jsonl"):
        if number > args.tune_queries:
            break
        tune_queries[f"t{number - 1}"] = obj["query"]
        tune_qrels[f"t{number - 1}"] = {f"t{number - 1}": 1}
    report = {"machine_start": machine(), "fixture": str(fixture), "documents": len(heldout.corpus),
              "heldout_queries": len(heldout.queries), "tune_queries": len(tune_queries)}
    with SpladeClient(args.url) as client, Engine(args.engine, "bench_quality", pipeline="splade", kind="splade",
                                                  recreate=args.recreate) as engine:
        written = index_documents(client, engine, iter(heldout.corpus.items()), kind="splade")
        report["index"] = {"written": written.written, "skipped": written.skipped, "seconds": written.seconds,
                           "docs_per_s": written.rate}

        def measure(qrels, queries, **kw) -> dict:
            r = Retriever(client, engine, kind="splade", **kw)
            start = time.perf_counter()
            run = _run(r, queries)
            return {"retriever": r.describe(), **measure_run(qrels, run),
                    "ms_per_query": 1000 * (time.perf_counter() - start) / len(queries)}

        sweep = [measure(tune_qrels, tune_queries, retriever=name) for name in ("bm25", "sparse")]
        sweep.append(measure(tune_qrels, tune_queries, retriever="hybrid", fusion="rrf"))
        best = {}
        for normalize in NORMALIZATIONS:
            rows = [measure(tune_qrels, tune_queries, retriever="hybrid", fusion="weighted", normalize=normalize,
                            weights={"bm25": w, "sparse": round(1 - w, 4)}) | {"bm25_weight": w}
                    for w in args.bm25_weights]
            sweep += rows
            best[normalize] = max(rows, key=lambda r: (r["nDCG@10"], r["Recall@100"]))["bm25_weight"]
        report["tune"], report["best_bm25_weight"] = sweep, best
        rows = [measure(heldout.qrels, heldout.queries, retriever="bm25"),
                measure(heldout.qrels, heldout.queries, retriever="sparse"),
                measure(heldout.qrels, heldout.queries, retriever="hybrid", fusion="rrf")]
        for normalize, w in best.items():
            rows.append(measure(heldout.qrels, heldout.queries, retriever="hybrid", fusion="weighted",
                                normalize=normalize, weights={"bm25": w, "sparse": round(1 - w, 4)}))
        report["heldout"] = rows
    report["machine_end"] = machine()
    return report


def _synthetic(fixture: Path, n: int, seed: int = 7) -> list[str]:
    """``n`` documents of 20-80 words drawn from the fixture's word frequencies (scale only)."""
    counts = Counter(w for _, obj in read_jsonl(fixture / "heldout" / "corpus.jsonl") for w in obj["text"].split())
    words, freq = zip(*counts.most_common(20000))
    p = np.array(freq, dtype=np.float64) / sum(freq)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 81, size=n)
    draws = rng.choice(len(words), size=int(lengths.sum()), p=p)
    out, at = [], 0
    for length in lengths:
        out.append(" ".join(words[i] for i in draws[at:at + length]))
        at += length
    return out


def _percentiles(ms: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def scale(args: argparse.Namespace) -> dict:
    fixture = Path(args.fixture)
    unique = _synthetic(fixture, args.unique)
    queries = [" ".join(t.split()[:4]) for t in _synthetic(fixture, args.queries, seed=11)]
    report = {"machine_start": machine(), "unique_documents": args.unique, "sizes": {}}
    with SpladeClient(args.url) as client:
        start = time.perf_counter()
        unique_vectors = client.encode_corpus(unique)
        report["encode_docs_per_s"] = len(unique) / (time.perf_counter() - start)
        report["doc_terms_mean"] = float(np.mean([len(v) for v in unique_vectors]))
        qvectors = client.encode_queries(queries)
        for n in sorted(args.docs):
            # Beyond the encoded documents, the same texts and vectors again under new ids.
            texts = [unique[i % len(unique)] for i in range(n)]
            vectors = [unique_vectors[i % len(unique)] for i in range(n)]
            path = Path(args.workdir) / f"scale_{n}.db"
            if path.is_dir():  # an index written by milvus-lite 3.x
                shutil.rmtree(path)
            path.unlink(missing_ok=True)
            ids = [f"doc{i}" for i in range(n)]
            with Engine(str(path), "bench_scale", pipeline="splade", kind="splade") as engine:
                start = time.perf_counter()
                for at in range(0, n, args.write_batch):
                    sl = slice(at, at + args.write_batch)
                    engine.write(ids[sl], texts[sl], vectors[sl])
                engine.flush()
                write_s = time.perf_counter() - start
                size = engine.size_on_disk()
                lat: dict[str, dict] = {}
                sparse_data = [{int(i): float(v) for i, v in zip(q.indices, q.values)} for q in qvectors]
                terms = list(queries)  # BM25: the engine analyses the query text
                plans = {"bm25": [Request("bm25", terms)], "sparse": [Request("sparse", sparse_data)],
                         "hybrid rrf": [Request("bm25", terms), Request("sparse", sparse_data)]}
                for name, requests in plans.items():
                    ms = []
                    for qi in range(len(queries)):
                        one = [Request(r.field, r.data[qi:qi + 1]) for r in requests]
                        t0 = time.perf_counter()
                        engine.search(one, limit=10, candidates=100)
                        ms.append(1000 * (time.perf_counter() - t0))
                    lat[name] = _percentiles(ms)
                # End to end: Triton encodes the query, the engine searches (and the client fuses).
                lat.update(_end_to_end(client, engine, queries))
            start = time.perf_counter()
            memory = SparseIndex(ids, vectors)
            build_s = time.perf_counter() - start
            ms = []
            for q in qvectors:
                t0 = time.perf_counter()
                memory.search(q, 10)
                ms.append(1000 * (time.perf_counter() - t0))
            postings = memory.postings
            report["sizes"][n] = {
                "engine": {"write_s": write_s, "docs_per_s": n / write_s, "disk_bytes": size,
                           "disk_bytes_per_doc": size / n if size else None, "latency": lat},
                "in_memory": {"build_s": build_s, "bytes": int(postings.data.nbytes + postings.indices.nbytes
                                                                 + postings.indptr.nbytes) * 2,
                              "latency": {"sparse": _percentiles(ms)}},
            }
            print(json.dumps({n: report["sizes"][n]}, indent=1), flush=True)
    report["machine_end"] = machine()
    return report


def _end_to_end(client, engine, queries) -> dict:
    """p50/p99 of each hybrid fusion, one query at a time: Triton encodes it, the engine searches, the client fuses."""
    out = {}
    for fusion in ("rrf", "weighted"):
        retriever = Retriever(client, engine, kind="splade", retriever="hybrid", fusion=fusion)
        ms = []
        for q in queries:
            t0 = time.perf_counter()
            retriever.search([q], 10)
            ms.append(1000 * (time.perf_counter() - t0))
        out[f"{retriever.describe()}, query encoded by Triton"] = _percentiles(ms)
    return out


def latency(args: argparse.Namespace) -> dict:
    """End-to-end query latency of each hybrid fusion on the collections ``scale`` left behind."""
    queries = [" ".join(t.split()[:4]) for t in _synthetic(Path(args.fixture), args.queries, seed=11)]
    report = {"machine_start": machine(), "sizes": {}}
    with SpladeClient(args.url) as client:
        client.encode_queries(queries[:8])  # warm
        for n in sorted(args.docs):
            with Engine(str(Path(args.workdir) / f"scale_{n}.db"), "bench_scale", pipeline="splade",
                        kind="splade") as engine:
                out = {"documents": engine.count(), **_end_to_end(client, engine, queries)}
            report["sizes"][n] = out
            print(json.dumps({n: out}, indent=1), flush=True)
    report["machine_end"] = machine()
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("quality", "scale", "latency"):
        s = sub.add_parser(name)
        s.add_argument("--url", default="grpc://127.0.0.1:8001")
        s.add_argument("--fixture", default=str(ROOT / "build" / "finetune" / "stdlib"))
        s.add_argument("--output", help="also write the report here (JSON)")
    q = sub.choices["quality"]
    q.add_argument("--engine", default=str(ROOT / "build" / "retrieval" / "quality.db"))
    q.add_argument("--recreate", action="store_true")
    q.add_argument("--tune-queries", type=int, default=400)
    q.add_argument("--bm25-weights", type=lambda s: [float(x) for x in s.split(",")],
                   default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    s = sub.choices["scale"]
    s.add_argument("--docs", type=lambda s: [int(x) for x in s.split(",")], default=[10000, 100000])
    s.add_argument("--queries", type=int, default=200)
    s.add_argument("--unique", type=int, default=10000, help="documents encoded; larger sizes repeat them")
    s.add_argument("--write-batch", type=int, default=1024)
    s.add_argument("--workdir", default=str(ROOT / "build" / "retrieval"))
    t = sub.choices["latency"]
    t.add_argument("--docs", type=lambda s: [int(x) for x in s.split(",")], default=[10000, 100000])
    t.add_argument("--queries", type=int, default=200)
    t.add_argument("--workdir", default=str(ROOT / "build" / "retrieval"))
    args = p.parse_args(argv)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    if args.command == "scale":
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    report = {"quality": quality, "scale": scale, "latency": latency}[args.command](args)
    report["versions"] = {k: version(k) for k in ("pymilvus", "milvus-lite", "ir-measures")}
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        tmp = Path(args.output).with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.output)


if __name__ == "__main__":
    main()
