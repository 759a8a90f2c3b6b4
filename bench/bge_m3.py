"""BGE-M3 on this CPU: the served `bge_m3` pipeline vs FlagEmbedding in process vs bare ONNX Runtime.

    .venv/bin/python -m bench.bge_m3                      # build/models/bge-m3-full (+ -src), small counts
    .venv/bin/python -m bench.bge_m3 --passages 48 --queries 20 --json-out build/bench/bge_m3.json
    .venv/bin/python -m bench.bge_m3 --long ""            # skip the long passages

Three ways to compute the same vectors, one after the other on the same cores:

- served: the ``bge_m3`` ensemble (dense + lexical weights) and ``bge_m3_colbert``
  (+ ColBERT) over gRPC, from a repository assembled for the export and run by
  the project's launcher (``splade_triton.launcher.harness``); requests of
  ``--batch`` passages, ``--concurrency`` in flight;
- flagembedding: ``BGEM3FlagModel(source, use_fp16=False, devices="cpu")``
  in a child process, ``encode(..., batch_size=--batch)``, torch on
  ``--threads`` threads;
- ort ("bare"): the exported graph on ``--runtime`` (the served encoder's,
  default openvino) in a child process, opened as the served encoder opens it
  (``--threads`` threads), texts sorted by length in batches of ``--batch``,
  tokenization and the lexical reduction included.

Each reports passages/s (``--passages`` texts of ~150 tokens), colbert
included or not, the CPU seconds spent per passage (served: tritonserver, its
stubs and the client; in process: the process), which a neighbour on the same
cores disturbs far less than wall time, and the p50 of ``--queries``
single-query requests.

Peak memory of one long passage (``--long``, tokens, default 2048,4096,8192):
the served encoder stub's VmHWM from /proc after each (ascending, so each is
the peak up to that length), and for each length a separate ORT process's
``resource.getrusage`` ru_maxrss. Both run under an address-space limit
(``--memory-cap-gib``, default 3/4 of MemAvailable; the stub through
prlimit): a length that needs more fails that request or process with an
allocation error instead of waking the kernel's OOM killer on a shared
machine. A length that failed is reported as "over the cap".

Random weights in XLM-R-large's shapes cost what BGE-M3 costs; the tokenizer
is the fixture's small one (``python -m splade_triton.artifacts.bge_m3 fixture
--full-size``), so texts are built to the token counts, not from real prose.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "build" / "models" / "bge-m3-full"
SOURCE = ROOT / "build" / "models" / "bge-m3-full-src"
PASSAGE_TOKENS = 150
LONG_TEXT_TOKENS = 8192


# ---------------------------------------------------------------- texts


def _sentences() -> list[str]:
    from splade_triton.artifacts.bge_m3 import CORPUS
    from splade_triton.artifacts.texts import VARIED_TEXTS

    return [s for s in [*CORPUS, *VARIED_TEXTS] if s.strip()]


def make_texts(tokenizer, count: int, tokens: int, seed: int) -> list[str]:
    """``count`` texts of about ``tokens`` tokens (special tokens included), sentences drawn at random."""
    pool, rng, texts = _sentences(), np.random.default_rng(seed), []
    for _ in range(count):
        parts: list[str] = []
        while (n := len(tokenizer.encode(" ".join(parts)).ids)) < tokens:
            parts.append(pool[rng.integers(len(pool))])
            before = n
        # The closer of the last two lengths to ``tokens``.
        if len(parts) > 1 and n - tokens > tokens - before:
            parts.pop()
        texts.append(" ".join(parts))
    return texts


def make_queries(tokenizer, count: int, seed: int) -> list[str]:
    """Single short sentences (~10-30 tokens)."""
    pool = [s for s in _sentences() if len(tokenizer.encode(s).ids) <= 32]
    rng = np.random.default_rng(seed)
    return [pool[rng.integers(len(pool))] for _ in range(count)]


def texts_for(model: Path, args) -> dict:
    from splade_triton.serving.tokens import load_tokenizer

    tokenizer = load_tokenizer(model / "tokenizer.json", LONG_TEXT_TOKENS)
    passages = make_texts(tokenizer, args.passages, PASSAGE_TOKENS, seed=1)
    queries = make_queries(tokenizer, args.queries, seed=2)
    long = [make_texts(tokenizer, 1, n, seed=3)[0] for n in args.long]
    stats = {
        "passages": len(passages),
        "passage_tokens_mean": float(np.mean([len(tokenizer.encode(t).ids) for t in passages])),
        "queries": len(queries),
        "query_tokens_mean": float(np.mean([len(tokenizer.encode(t).ids) for t in queries])) if queries else 0.0,
        "long_text_tokens": [len(tokenizer.encode(t).ids) for t in long],
    }
    return {"passages": passages, "queries": queries, "long": long, "stats": stats}


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def own_cpu_s() -> float:
    """User + system CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def p50_ms(samples: list[float]) -> float:
    return round(1000 * statistics.median(samples), 1) if samples else float("nan")


# ---------------------------------------------------------------- served


def _vm(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


_METRIC = re.compile(r'^(nv_inference_(?:compute_infer_duration_us|queue_duration_us|exec_count|request_success))'
                     r'\{model="([^"]+)",version="[^"]*"\} (\S+)$', re.M)


def model_metrics(url: str) -> dict:
    """Triton's per-model counters: (metric, model) -> value."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {(m, model): float(v) for m, model, v in _METRIC.findall(text)}


def per_step(before: dict, after: dict, texts: int) -> dict:
    """Per composing model: executions, and compute / queue milliseconds per text, over a measurement."""
    steps = {}
    for (metric, model), value in after.items():
        if model.startswith("bge_m3_") and model != "bge_m3_colbert":
            steps.setdefault(model, {})[metric] = value - before.get((metric, model), 0.0)
    return {model: {"executions": int(m.get("nv_inference_exec_count", 0)),
                    "compute_ms_per_text": round(m.get("nv_inference_compute_infer_duration_us", 0) / 1000 / texts, 2),
                    "queue_ms_per_text": round(m.get("nv_inference_queue_duration_us", 0) / 1000 / texts, 2)}
            for model, m in sorted(steps.items())}


def served(model: Path, args, texts: dict) -> dict:
    import tritonclient.grpc as grpcclient

    from splade_triton.artifacts.repository import Pipeline, assemble
    from splade_triton.launcher.harness import Launched
    from splade_triton.launcher.stubs import cpu_seconds

    work = ROOT / "build" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline("bge_m3", "bge_m3", model).with_step(
        "encoder", parameters={"intra_op_threads": args.threads, "runtime": args.runtime})
    repository = assemble(work / "bge_m3_repository", [pipeline])
    result: dict = {}
    started = time.perf_counter()
    with Launched(repository, work / "bge_m3_server.log", ready_timeout_s=900) as server:
        result["ready_s"] = round(time.perf_counter() - started, 1)
        client = grpcclient.InferenceServerClient(server.grpc_url)

        def cpu() -> float:
            """CPU seconds of tritonserver, its stubs and this client process."""
            pids = [server.tritonserver_pid(), *(stub.pid for stub in server.stubs())]
            return sum(cpu_seconds(pid) for pid in pids) + own_cpu_s()

        def infer(model_name, chunk, outputs, input_type="document"):
            text = grpcclient.InferInput("text", [len(chunk), 1], "BYTES")
            text.set_data_from_numpy(np.array([[t.encode()] for t in chunk], dtype=object))
            wanted = [grpcclient.InferRequestedOutput(o) for o in outputs]
            return client.infer(model_name, [text], outputs=wanted, parameters={"input_type": input_type})

        lexical = ["dense", "indices", "values", "tokens"]
        variants = {"dense+sparse": ("bge_m3", lexical), "dense+sparse+colbert": ("bge_m3_colbert", lexical + ["colbert", "colbert_lengths"])}
        chunks = batches(texts["passages"], args.batch)
        for label, (name, outputs) in variants.items():
            with ThreadPoolExecutor(args.concurrency) as pool:
                # Warm-up in the measured shape: `concurrency` requests at once
                # reach the encoder as one execution of that many texts (its
                # first, larger buffers are slow to touch on these VMs).
                list(pool.map(lambda c: infer(name, c, outputs), chunks[: args.concurrency]))
                before, cpu0 = model_metrics(server.metrics_url), cpu()
                t0 = time.perf_counter()
                list(pool.map(lambda c: infer(name, c, outputs), chunks))
                elapsed = time.perf_counter() - t0
                cpu_s = cpu() - cpu0
            result[f"passages_per_s[{label}]"] = round(len(texts["passages"]) / elapsed, 2)
            result[f"cpu_s_per_passage[{label}]"] = round(cpu_s / len(texts["passages"]), 3)
            result[f"steps[{label}]"] = per_step(before, model_metrics(server.metrics_url), len(texts["passages"]))
            result[f"steps[{label}]"]["wall_ms_per_text"] = round(1000 * elapsed / len(texts["passages"]), 2)
        latencies = []
        for q in texts["queries"]:
            t0 = time.perf_counter()
            infer("bge_m3", [q], lexical, input_type="query")
            latencies.append(time.perf_counter() - t0)
        result["query_p50_ms"] = p50_ms(latencies)
        if texts["long"]:
            (encoder,) = [s for s in server.stubs() if s.model == "bge_m3_encoder"]
            cap = int(args.memory_cap_gib * 2**30)
            resource.prlimit(encoder.pid, resource.RLIMIT_AS, (cap, cap))
            result["encoder_stub_vmhwm_before_long_gib"] = round(_vm(encoder.pid)["VmHWM"] / 2**30, 2)
            for tokens, text in sorted(zip(args.long, texts["long"])):
                t0 = time.perf_counter()
                try:
                    infer("bge_m3", [text], lexical)
                except Exception as e:  # noqa: BLE001 - an allocation failure is a result here
                    result[f"long[{tokens}]"] = {"error": str(e)[:300], "over_cap_gib": args.memory_cap_gib}
                    break
                result[f"long[{tokens}]"] = {"seconds": round(time.perf_counter() - t0, 1),
                                             "encoder_stub_vmhwm_gib": round(_vm(encoder.pid)["VmHWM"] / 2**30, 2)}
    return result


# ---------------------------------------------------------------- in-process references (child processes)


def _bare_session(model: Path, runtime: str, threads: int):
    """The graph as the served encoder opens it (splade_triton.serving.runtime), in this process."""
    from splade_triton.serving.runtime import open_session

    return open_session(str(model / "model.onnx"), runtime, "fp32", threads, False, "all")


def phase_ort(model: Path, args, texts: dict) -> dict:
    from splade_triton.serving.bge_m3 import SPECIAL_TOKENS, lexical_weights, read_export_info
    from splade_triton.serving.tokens import load_tokenizer, pad_ids

    info = read_export_info(model / "export_info.json")
    special = [info["special_ids"][k] for k in SPECIAL_TOKENS]
    # The served lengths: documents up to what the export serves, queries 512.
    tokenizer = load_tokenizer(model / "tokenizer.json", info["max_length"])
    query_tokenizer = load_tokenizer(model / "tokenizer.json", 512)
    session = _bare_session(model, args.runtime, args.threads)

    def encode(tok, chunk, outputs):
        encodings = tok.encode_batch(chunk)
        order = sorted(range(len(chunk)), key=lambda i: len(encodings[i].ids))
        for group in batches(order, args.batch):
            ids, mask = pad_ids([encodings[i] for i in group])
            out = dict(zip(outputs, session.run(outputs, {"input_ids": ids, "attention_mask": mask})))
            lexical_weights(ids, out["token_weights"], special)

    result: dict = {}
    if args.phase == "ort-long":
        (text,) = texts["long"]
        result["ru_maxrss_after_load_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        t0 = time.perf_counter()
        try:
            encode(tokenizer, [text], ["dense", "token_weights"])
        except Exception as e:  # noqa: BLE001 - an allocation failure is a result here
            return {**result, "error": str(e)[:300], "over_cap_gib": args.memory_cap_gib}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["ru_maxrss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        return result
    encode(tokenizer, texts["passages"][:args.batch], ["dense", "token_weights", "colbert"])  # warm-up
    for label, outputs in (("dense+sparse", ["dense", "token_weights"]), ("dense+sparse+colbert", ["dense", "token_weights", "colbert"])):
        t0, cpu0 = time.perf_counter(), own_cpu_s()
        encode(tokenizer, texts["passages"], outputs)
        result[f"passages_per_s[{label}]"] = round(len(texts["passages"]) / (time.perf_counter() - t0), 2)
        result[f"cpu_s_per_passage[{label}]"] = round((own_cpu_s() - cpu0) / len(texts["passages"]), 3)
    latencies = []
    for q in texts["queries"]:
        t0 = time.perf_counter()
        encode(query_tokenizer, [q], ["dense", "token_weights"])
        latencies.append(time.perf_counter() - t0)
    result["query_p50_ms"] = p50_ms(latencies)
    return result


def phase_flag(source: Path, args, texts: dict) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from FlagEmbedding import BGEM3FlagModel

    model = BGEM3FlagModel(str(source), use_fp16=False, devices="cpu")
    quiet = {"batch_size": args.batch, "max_length": 8192}

    def encode(chunk, colbert, **kw):
        return model.encode(chunk, return_dense=True, return_sparse=True, return_colbert_vecs=colbert, **{**quiet, **kw})

    encode(texts["passages"][:args.batch], True)  # warm-up
    result: dict = {"torch_threads": torch.get_num_threads()}
    for label, colbert in (("dense+sparse", False), ("dense+sparse+colbert", True)):
        t0, cpu0 = time.perf_counter(), own_cpu_s()
        encode(texts["passages"], colbert)
        result[f"passages_per_s[{label}]"] = round(len(texts["passages"]) / (time.perf_counter() - t0), 2)
        result[f"cpu_s_per_passage[{label}]"] = round((own_cpu_s() - cpu0) / len(texts["passages"]), 3)
    latencies = []
    for q in texts["queries"]:
        t0 = time.perf_counter()
        encode([q], False, max_length=512)
        latencies.append(time.perf_counter() - t0)
    result["query_p50_ms"] = p50_ms(latencies)
    return result


def run_phase(phase: str, args, long: str = "") -> dict:
    """One in-process system in its own process (its own memory, its own threads)."""
    argv = [sys.executable, "-m", "bench.bge_m3", "--phase", phase, "--model", args.model, "--source", args.source,
            "--passages", args.passages, "--queries", args.queries, "--batch", args.in_process_batch or args.batch,
            "--threads", args.threads,
            "--long", long, "--memory-cap-gib", args.memory_cap_gib, "--runtime", args.runtime]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(list(map(str, argv)), cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench.bge_m3: phase {phase} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


def machine() -> dict:
    info = open("/proc/cpuinfo").read()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.*)$", info, re.M).group(1).split())
    wanted = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return {"cpu": model.group(1).strip() if model else platform.processor(), "cpus": os.cpu_count(), "flags": wanted,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bge_m3", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL, help="the export (python -m export.export_onnx)")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the checkpoint FlagEmbedding loads")
    parser.add_argument("--passages", type=int, default=32, help="passages of ~150 tokens per measurement")
    parser.add_argument("--queries", type=int, default=10, help="single-query requests for the p50")
    parser.add_argument("--batch", type=int, default=8, help="texts per request / per batch")
    parser.add_argument("--concurrency", type=int, default=2, help="served: requests in flight")
    parser.add_argument("--in-process-batch", type=int, default=None,
                        help="texts per batch of the in-process systems (default: --batch); e.g. --batch 1 "
                             "--concurrency 4 --in-process-batch 8: single-passage requests against batches of 8")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="ORT intra-op / torch threads")
    parser.add_argument("--long", default=f"2048,4096,{LONG_TEXT_TOKENS}",
                        help="tokens of the long passages, comma-separated ('' skips them)")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="address-space limit of the encoder stub and ORT processes (default: 3/4 of MemAvailable)")
    parser.add_argument("--systems", default="served,flagembedding,ort", help="comma-separated subset")
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="openvino",
                        help="the served encoder's runtime and the bare ('ort') system's: the same graph on the same "
                             "runtime, so their ratio is the serving stack's cost")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--phase", choices=("ort", "ort-long", "flagembedding"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model, args.source = args.model.resolve(), args.source.resolve()
    args.long = [int(n) for n in str(args.long).split(",") if n.strip()]
    if args.memory_cap_gib is None:
        available = int(re.search(r"MemAvailable:\s+(\d+)", open("/proc/meminfo").read()).group(1)) * 1024
        args.memory_cap_gib = round(0.75 * available / 2**30, 1)
    if args.phase:
        cap = int(args.memory_cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    texts = texts_for(args.model, args)
    if args.phase:
        result = phase_flag(args.source, args, texts) if args.phase == "flagembedding" else phase_ort(args.model, args, texts)
        print(json.dumps(result))
        return

    systems = [s for s in args.systems.split(",") if s]
    report = {"machine": machine(), "texts": texts["stats"],
              "settings": {k: getattr(args, k) for k in ("passages", "queries", "batch", "concurrency", "in_process_batch",
                                                          "runtime", "threads", "long", "memory_cap_gib")},
              "model": str(args.model.relative_to(ROOT) if ROOT in args.model.parents else args.model)}
    for system in systems:
        print(f"bench.bge_m3: {system} ...", file=sys.stderr, flush=True)
        if system == "served":
            report["served"] = served(args.model, args, texts)
        elif system in ("flagembedding", "ort"):
            report[system] = run_phase(system, args)
            if system == "ort":
                for tokens in args.long:
                    report["ort"][f"long[{tokens}]"] = run_phase("ort-long", args, str(tokens))
        else:
            raise SystemExit(f"bench.bge_m3: unknown system {system!r}")
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    ratios = {}
    for label in ("dense+sparse", "dense+sparse+colbert"):
        key = f"passages_per_s[{label}]"
        ours = report.get("served", {}).get(key)
        for other in ("flagembedding", "ort"):
            theirs = report.get(other, {}).get(key)
            if ours and theirs:
                ratios[f"served/{other}[{label}]"] = round(ours / theirs, 2)
            ours_cpu, theirs_cpu = (report.get(s, {}).get(f"cpu_s_per_passage[{label}]") for s in ("served", other))
            if ours_cpu and theirs_cpu:
                # Passages per CPU-second, ours over theirs: what the wall-clock
                # ratio would be on cores nobody else uses.
                ratios[f"served/{other}[{label}] by CPU time"] = round(theirs_cpu / ours_cpu, 2)
    report["ratios"] = ratios
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
