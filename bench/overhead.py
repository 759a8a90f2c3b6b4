"""Small overhead measurements behind docs/overhead.md (figures, never assertions).

    python -m bench.overhead micro                      # padding / regrouping in-process, old loops vs serving/tokens.py
    python -m bench.overhead sparsify                   # sparsify with and without the vocabulary-wide embedding, in-process
    python -m bench.overhead grpc --repository DIR --model splade --kind passages --concurrency 16
    python -m bench.overhead perf --repository DIR --kind queries --concurrency 1,64

``grpc``: a threaded tritonclient gRPC loop asking only ``--outputs``; ``perf``:
perf_analyzer (build/bench/perf_analyzer, installed by script/setup) on the
``splade`` ensemble. Both start the launcher on ``--repository`` on free ports
and stop it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench import workloads
from splade_triton.launcher.harness import Launched
from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.serving.splade import activate, sparsify
from splade_triton.serving.terms import TermTable
from splade_triton.serving.tokens import load_tokenizer, pad_ids

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "build" / "models" / "splade-tiny"
PERF_ANALYZER = ROOT / "build" / "bench" / "perf_analyzer"


def _best_of(fn, repeat=7, number=200) -> float:
    """Microseconds per call, best of ``repeat`` rounds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


# The per-row loops serving used before serving/tokens.py, kept here as the "before".
def _old_pad(encodings, length):
    ids = np.zeros((len(encodings), length), dtype=np.int64)
    mask = np.zeros((len(encodings), length), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
    return ids, mask


class _OldRaggedEncoder(RaggedEncoder):
    """RaggedEncoder.encode as it was before serving/tokens.py (per-row loops)."""

    def encode(self, batches):
        from splade_triton.serving.batching import plan_chunks

        rows = []
        for ids, mask in batches:
            keep = mask.astype(bool, copy=False)
            rows.extend(row[k] for row, k in zip(ids, keep))
        lengths = np.fromiter((r.size for r in rows), dtype=np.int64, count=len(rows))
        pooled = self._output(len(rows))
        for chunk in plan_chunks(lengths, self.max_batch_tokens):
            width = int(lengths[chunk].max())
            ids = np.zeros((chunk.size, width), dtype=np.int64)
            mask = np.zeros((chunk.size, width), dtype=np.int64)
            for j, i in enumerate(chunk):
                ids[j, : lengths[i]] = rows[i]
                mask[j, : lengths[i]] = 1
            pooled[chunk] = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        out, start = [], 0
        for ids, _ in batches:
            out.append(pooled[start : start + ids.shape[0]])
            start += ids.shape[0]
        return out


class _NullSession:
    """An ONNX Runtime session stand-in: measures the regrouping, not the model."""

    def __init__(self, vocab):
        self.vocab = vocab

    def get_outputs(self):
        return [type("O", (), {"shape": ["batch", self.vocab]})()]

    def run(self, _, feeds):
        return [np.zeros((feeds["input_ids"].shape[0], self.vocab), np.float32)]


def micro(args) -> dict:
    tokenizer = load_tokenizer(MODEL / "tokenizer.json")
    out = {}
    for kind, count in (("queries", 1), ("queries", 64), ("passages", 16), ("passages", 64)):
        texts = workloads.make(tokenizer, kind, count)
        enc = tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in enc)
        batches = [pad_ids(enc[i : i + 1]) for i in range(count)]  # one request per text
        new, old = RaggedEncoder(_NullSession(8), 8192), _OldRaggedEncoder(_NullSession(8), 8192)
        out[f"{kind} x{count}"] = {
            "tokenizer pad, before (row loop) us": round(_best_of(lambda: _old_pad(enc, length)), 1),
            "tokenizer pad, after (pad_ids) us": round(_best_of(lambda: pad_ids(enc, length)), 1),
            "encoder regroup, before us": round(_best_of(lambda: old.encode(batches)), 1),
            "encoder regroup, after us": round(_best_of(lambda: new.encode(batches)), 1),
        }
    return out


def sparsify_cost(args) -> dict:
    import onnxruntime as ort

    tokenizer = load_tokenizer(MODEL / "tokenizer.json")
    session = ort.InferenceSession(str(MODEL / "model.onnx"), providers=["CPUExecutionProvider"])
    terms = TermTable(tokenizer.get_vocab(with_added_tokens=True))
    out = {}
    for kind, count in (("queries", 64), ("passages", 64)):
        texts = workloads.make(tokenizer, kind, count)
        pooled = RaggedEncoder(session, 8192).encode([pad_ids(tokenizer.encode_batch(texts))])[0].copy()

        def sparse_only():
            s = sparsify(pooled)
            terms.lookup(s.indices)

        def with_embedding():
            sparse_only()
            activate(pooled.copy())  # the [n, vocab] output sparsify no longer makes for `splade`

        out[f"{kind} x{count}"] = {
            "sparse outputs only ms": round(_best_of(sparse_only, 5, 20) / 1e3, 3),
            "sparse + embedding ms": round(_best_of(with_embedding, 5, 20) / 1e3, 3),
            "embedding bytes": int(pooled.nbytes),
        }
    return out


@contextmanager
def served(repository: Path):
    """The launcher on ``repository`` (free ports); yields {"grpc": port}."""
    log = tempfile.NamedTemporaryFile(prefix="overhead-server-", suffix=".log", delete=False)
    server = Launched(Path(repository), Path(log.name)).start()
    try:
        server.wait_ready()
        yield {"grpc": int(server.grpc_url.rsplit(":", 1)[1])}
    finally:
        server.stop()


def grpc_loop(args) -> dict:
    import tritonclient.grpc as grpcclient

    texts = workloads.make(load_tokenizer(MODEL / "tokenizer.json"), args.kind, 512)
    outputs = args.outputs.split(",")
    with served(args.repository) as ports:
        url = f"127.0.0.1:{ports['grpc']}"
        latencies, stop, lock = [], threading.Event(), threading.Lock()

        def worker(k):
            client = grpcclient.InferenceServerClient(url)
            requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
            i = k
            while not stop.is_set():
                tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[texts[i % len(texts)].encode()]], dtype=object))
                start = time.perf_counter()
                client.infer(args.model, [tensor], outputs=requested)
                with lock:
                    latencies.append((start, time.perf_counter() - start))
                i += args.concurrency

        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(args.concurrency)]
        begin = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(args.warmup + args.seconds)
        stop.set()
        for t in threads:
            t.join()
    window = [lat for start, lat in latencies if start >= begin + args.warmup and start < begin + args.warmup + args.seconds]
    ms = np.array(window) * 1e3
    return {"model": args.model, "outputs": outputs, "kind": args.kind, "concurrency": args.concurrency,
            "seconds": args.seconds, "requests_per_s": round(len(window) / args.seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def perf(args) -> dict:
    texts = workloads.make(load_tokenizer(MODEL / "tokenizer.json"), args.kind, 512)
    data = workloads.write_perf_analyzer_json(texts, Path(tempfile.mkdtemp()) / f"{args.kind}.json")
    env = dict(os.environ, LD_LIBRARY_PATH=str(PERF_ANALYZER / "libs"))
    out = {}
    with served(args.repository) as ports:
        for c in args.concurrency_list:
            with tempfile.NamedTemporaryFile(suffix=".csv") as report:
                cmd = [str(PERF_ANALYZER / "bin" / "perf_analyzer"), "-m", args.model, "-i", "grpc",
                       "-u", f"127.0.0.1:{ports['grpc']}", "--input-data", str(data), f"--concurrency-range={c}",
                       f"--measurement-interval={args.interval}", "--stability-percentage=50", "--max-trials=6",
                       "-f", report.name]
                result = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if result.returncode != 0:
                    raise SystemExit(result.stdout[-2000:] + result.stderr[-2000:])
                import csv

                row = next(csv.DictReader(open(report.name)))
                out[f"concurrency {c}"] = {"texts_per_s": float(row["Inferences/Second"]),
                                           "p50_ms": int(row["p50 latency"]) / 1000,
                                           "p99_ms": int(row["p99 latency"]) / 1000}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("micro")
    sub.add_parser("sparsify")
    for name in ("grpc", "perf"):
        p = sub.add_parser(name)
        p.add_argument("--repository", type=Path, required=True)
        p.add_argument("--model", default="splade")
        p.add_argument("--kind", choices=list(workloads.WORKLOADS), default="queries")
    sub.choices["grpc"].add_argument("--outputs", default="indices,values,tokens")
    sub.choices["grpc"].add_argument("--concurrency", type=int, default=16)
    sub.choices["grpc"].add_argument("--seconds", type=float, default=20)
    sub.choices["grpc"].add_argument("--warmup", type=float, default=5)
    sub.choices["perf"].add_argument("--concurrency", default="1,64")
    sub.choices["perf"].add_argument("--interval", type=int, default=5000, help="ms per perf_analyzer window")
    args = parser.parse_args(argv)
    if args.command == "perf":
        args.concurrency_list = [int(c) for c in args.concurrency.split(",")]
    run = {"micro": micro, "sparsify": sparsify_cost, "grpc": grpc_loop, "perf": perf}[args.command]
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
