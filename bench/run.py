#!/usr/bin/env python3
"""The project's benchmark: the Triton ensemble beside the alternatives, in one run.

For each model (the default SPLADE-tiny, and a BERT-base-shaped SPLADE with
random weights, the cost of SPLADE++ / splade-v3) and each workload (queries,
passages), on the same texts:

- the ``splade`` ensemble under perf_analyzer, gRPC and HTTP, a concurrency
  sweep, with Triton's per-model queue and compute times;
- in process, same thread budget: ONNX Runtime on the same fused .onnx at
  several batch sizes (texts grouped by length or not) - the ceiling; the
  unfused design ([batch, seq, vocab] logits out of ONNX Runtime, pooling in
  numpy); sentence-transformers' SparseEncoder;
- achieved GFLOP/s against the machine's measured fp32 GEMM peak.

Writes docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.png.

    .venv/bin/python -m bench.run               # the full run (~15 min on 2 cores)
    .venv/bin/python -m bench.run --quick       # a tiny setting, to check it runs
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import dataclasses
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench import flops, workloads
from splade_triton.artifacts.repository import assemble, default_pipelines
from splade_triton.launcher.harness import Launched
from splade_triton.launcher.stubs import cpu_seconds as process_cpu_seconds, stub_processes
from splade_triton.serving.splade import activate

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench"
PERF_ANALYZER_WHEEL = "tritonclient==2.50.0"  # its manylinux1 binary runs on glibc 2.36
# That wheel pinned with its hash (installed apart from the venv's own tritonclient).
PERF_ANALYZER_LOCK = ROOT / "requirements" / "perf-analyzer.txt"


# --------------------------------------------------------------------------- set-up


def perf_analyzer() -> tuple[Path, dict]:
    """perf_analyzer from the tritonclient 2.50.0 wheel (hash-checked), with the two libraries it needs."""
    target = BUILD / "perf_analyzer"
    binary = target / "bin" / "perf_analyzer"
    libs = target / "libs"
    if not binary.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps", "--only-binary", ":all:",
             "--target", str(target), "-r", str(PERF_ANALYZER_LOCK)],
            check=True,
        )
    libs.mkdir(parents=True, exist_ok=True)
    import pytriton

    bundled = Path(pytriton.__file__).resolve().parents[1] / "nvidia_pytriton.libs"
    for name, prefix in (("libb64.so.0d", "libb64-"), ("libcudart.so.12", "libcudart-")):
        link = libs / name
        if not link.exists():
            (source,) = bundled.glob(prefix + "*")
            link.symlink_to(source)
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs))
    return binary, env


def prepare_bert_base(dest: Path) -> Path:
    """A BERT-base-shaped masked LM with random weights and the SPLADE-tiny tokenizer.

    The MLM output bias is shifted so that about 200 terms of a passage are
    non-zero, as with a trained SPLADE (random logits are positive for half the
    vocabulary). The cost is that of SPLADE++ / splade-v3; its vectors mean
    nothing: use it for speed only.
    """
    if (dest / "model.safetensors").is_file():
        return dest
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig()).eval()
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "models" / "splade-tiny")
    sample = workloads.make(tokenizer.backend_tokenizer, "passages", 8, seed=99)
    with torch.inference_mode():
        batch = tokenizer(sample, padding=True, return_tensors="pt")
        pooled = model(**batch).logits.amax(dim=1)
    shift = float(torch.quantile(pooled.flatten(), 1 - 200 / pooled.shape[1]))
    with torch.no_grad():
        model.cls.predictions.bias -= shift
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def prepare_repository(name: str, model_dir: Path) -> Path:
    """A model repository for this model: the project's own, or the default pipeline on an export made here."""
    if name == "splade-tiny":
        return ROOT / "model_repository"
    exported = BUILD / name / "exported"
    if not (exported / "model.onnx").is_file():
        subprocess.run([sys.executable, "-m", "export.export_onnx", "--model", str(model_dir),
                        "--output", str(exported)], cwd=ROOT, check=True)
    pipeline = next(p for p in default_pipelines() if p.name == "splade")
    return assemble(BUILD / name / "model_repository", [dataclasses.replace(pipeline, model=exported)])


def unfused_onnx(name: str, model_dir: Path) -> Path:
    """The same model exported without the pooling: [batch, seq, vocab] logits out."""
    path = BUILD / name / "unfused.onnx"
    if not path.is_file():
        from export.export_onnx import export
        from splade_triton.artifacts import reference

        path.parent.mkdir(parents=True, exist_ok=True)
        export(reference.load(str(model_dir))[1], path, opset=18, pooled=False)
    return path


# --------------------------------------------------------------------------- in process


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def batches(tokenizer, texts, batch_size: int, grouped: bool):
    """Pre-tokenized, padded batches; grouped: texts sorted by length first."""
    encodings = tokenizer.encode_batch(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids)) if grouped else range(len(texts))
    order = list(order)
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [encodings[i].ids for i in order[start : start + batch_size]]
        width = max(map(len, chunk))
        ids = np.zeros((len(chunk), width), np.int64)
        mask = np.zeros((len(chunk), width), np.int64)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def best_rate(fn, count: int, repeat: int) -> float:
    fn()  # warm-up: first-touch of ONNX Runtime's arena
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / float(np.median(times))


def in_process(model: dict, texts: list[str], threads: int, repeat: int, batch_sizes: list[int]) -> dict:
    tokenizer = workloads.load_tokenizer(model["repository"] / "splade_tokenizer" / "1" / "tokenizer.json")
    results = {}

    # Every in-process figure includes tokenization (texts in, as the service takes them).
    fused = ort_session(model["repository"] / "splade_encoder" / "1" / "model.onnx", threads)
    for grouped in (True, False):
        for bs in batch_sizes:
            rate = best_rate(lambda: [fused.run(None, f) for f in batches(tokenizer, texts, bs, grouped)],
                             len(texts), repeat)
            results[f"ort_fused_bs{bs}_{'grouped' if grouped else 'arrival'}"] = rate
    del fused

    best_bs = max(batch_sizes, key=lambda bs: results[f"ort_fused_bs{bs}_grouped"])
    unfused = ort_session(model["unfused"], threads)

    def unfused_run():
        for f in batches(tokenizer, texts, best_bs, True):
            logits = unfused.run(None, f)[0]
            # The literal pooling in numpy: mask, max over tokens, activation.
            logits[f["attention_mask"] == 0] = -np.inf
            activate(logits.max(axis=1))

    results[f"unfused_numpy_bs{best_bs}_grouped"] = best_rate(unfused_run, len(texts), repeat)
    del unfused

    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.models import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    torch.set_num_threads(threads)
    encoder = SparseEncoder(
        modules=[Transformer(str(model["dir"]), transformer_task="fill-mask", max_seq_length=512), SpladePooling("max")],
        device="cpu",
    )
    results["sentence_transformers_bs32"] = best_rate(
        lambda: encoder.encode(texts, batch_size=32, convert_to_tensor=True), len(texts), repeat
    )
    return results


def int8_figures(name: str, model: dict, texts: list[str], threads: int, repeat: int, batch_size: int) -> dict:
    from bench import int8

    tokenizer = workloads.load_tokenizer(model["repository"] / "splade_tokenizer" / "1" / "tokenizer.json")
    fp32 = model["repository"] / "splade_encoder" / "1" / "model.onnx"
    quantized = int8.quantize(fp32, BUILD / name / "model.int8.onnx")
    return int8.compare(fp32, quantized, batches(tokenizer, texts, batch_size, True), len(texts), threads, repeat)


# --------------------------------------------------------------------------- served


class Served(Launched):
    """The launcher (as script/serve runs it) on free 127.0.0.1 ports, with Triton's per-model statistics.

    A readiness timeout or failure stops everything it started (no tritonserver,
    port or /dev/shm region is left behind).
    """

    def __init__(self, repository: Path, log: Path, ready_timeout_s: float = 180.0):
        super().__init__(repository, log, ready_timeout_s=ready_timeout_s)
        self.start()
        try:
            self.wait_ready()
        except Exception as e:
            raise SystemExit(f"the server did not become ready ({e.__class__.__name__}); see {log}") from None

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://{self.url('http')}/v2/models/stats", timeout=10) as r:
            data = json.load(r)
        out = {}
        for m in data["model_stats"]:
            s = m["inference_stats"]
            out[m["name"]] = {
                "inferences": m["inference_count"],
                "executions": m["execution_count"],
                "requests": s["success"]["count"],
                "queue_ns": s["queue"]["ns"],
                "input_ns": s["compute_input"]["ns"],
                "infer_ns": s["compute_infer"]["ns"],
                "output_ns": s["compute_output"]["ns"],
            }
        return out


def cpu_seconds(served: "Served") -> dict[str, float]:
    """CPU time (user + system) so far of tritonserver and of each model's stubs."""
    server = served.tritonserver_pid()
    out = {"tritonserver": process_cpu_seconds(server)}
    for stub in stub_processes(server):
        out[stub.model] = out.get(stub.model, 0.0) + process_cpu_seconds(stub.pid)
    return out


def stage_figures(before: dict, after: dict) -> dict:
    """Per model: texts per execution; per request, mean queue time and the mean
    duration of the execution that served it (Triton counts compute per request)."""
    out = {}
    for name in ("splade_tokenizer", "splade_encoder", "splade_sparsify", "splade"):
        d = {k: after[name][k] - before[name][k] for k in after[name]}
        if not d["requests"]:
            continue
        out[name] = {
            "texts_per_execution": round(d["inferences"] / max(d["executions"], 1), 1),
            "queue_ms": round(d["queue_ns"] / d["requests"] / 1e6, 3),
            # Triton's compute_input / compute_infer / compute_output.
            "compute_ms": [round(d[k] / d["requests"] / 1e6, 3) for k in ("input_ns", "infer_ns", "output_ns")],
        }
    return out


def run_perf_analyzer(pa: tuple[Path, dict], served: Served, protocol: str, data: Path, concurrency: int,
                      interval_ms: int, stability: int = 20) -> dict:
    """One perf_analyzer measurement; if it cannot get ``stability``% stable windows
    (a noisy machine), once more with a looser threshold, and say so."""
    binary, env = pa
    for threshold in (stability, max(stability, 50)):
        with tempfile.NamedTemporaryFile(suffix=".csv") as report:
            args = [
                str(binary), "-m", "splade", "-i", protocol, "-u", served.url(protocol),
                "--input-data", str(data), f"--concurrency-range={concurrency}",
                f"--measurement-interval={interval_ms}", f"--stability-percentage={threshold}", "--max-trials=6",
                "-f", report.name,
            ]
            before, cpu_before, client_before = served.stats(), cpu_seconds(served), _children_cpu()
            result = subprocess.run(args, env=env, capture_output=True, text=True)
            after, cpu_after, client_after = served.stats(), cpu_seconds(served), _children_cpu()
            if result.returncode == 0:
                row = next(csv.DictReader(open(report.name)))
                texts = max(after["splade"]["inferences"] - before["splade"]["inferences"], 1)
                break
    else:
        raise SystemExit(f"perf_analyzer failed:\n{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    figures = {
        # Recorded without this machine's paths and ports.
        "command": " ".join(["perf_analyzer", *args[1:-2]])
        .replace(str(ROOT) + "/", "")
        .replace(served.url(protocol), f"127.0.0.1:{'HTTP_PORT' if protocol == 'http' else 'GRPC_PORT'}"),
        "stability_percentage": threshold,
        "texts_per_s": float(row["Inferences/Second"]),
        "p50_ms": int(row["p50 latency"]) / 1000,
        "p99_ms": int(row["p99 latency"]) / 1000,
        "stages": stage_figures(before, after),
        # Where the machine's CPU went during the whole perf_analyzer run (its
        # warm-up and every window): core-milliseconds per text served.
        "cpu_ms_per_text": {
            **{k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
            "perf_analyzer": client_after - client_before,
        },
    }
    figures["cpu_ms_per_text"] = {k: round(v * 1000 / texts, 3) for k, v in figures["cpu_ms_per_text"].items()}
    return figures


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0)",
        "perf_analyzer": PERF_ANALYZER_WHEEL,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny setting: SPLADE-tiny, few texts, short windows")
    parser.add_argument("--models", default="splade-tiny,bert-base-random")
    parser.add_argument("--threads", type=int, default=2, help="thread budget of the in-process baselines")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--skip-in-process", action="store_true", help="only the served figures")
    parser.add_argument("--repository", type=Path, help="serve this repository for SPLADE-tiny (tuning variants)")
    parser.add_argument("--workloads", default="queries,passages")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--concurrency", default="1,16,64", help="perf_analyzer concurrency sweep")
    args = parser.parse_args(argv)
    models = ["splade-tiny"] if args.quick else args.models.split(",")
    counts = {"queries": 16, "passages": 8} if args.quick else None
    sweep = [1, 4] if args.quick else [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.out = BUILD
    interval = 500 if args.quick else 4000
    repeat = 1 if args.quick else 3

    pa = perf_analyzer()
    report = {"machine": machine(), "models": {}}
    report["machine"]["gemm_gflops"] = {
        "numpy": round(flops.numpy_gemm_gflops(), 1),
        f"onnxruntime_{args.threads}_threads": round(flops.onnxruntime_gemm_gflops(args.threads), 1),
    }
    peak = max(report["machine"]["gemm_gflops"].values())
    print(f"fp32 GEMM peak: {report['machine']['gemm_gflops']}", flush=True)

    from transformers import AutoConfig

    for name in models:
        model_dir = ROOT / "models" / "splade-tiny" if name == "splade-tiny" else prepare_bert_base(BUILD / name / "model")
        repository = args.repository if args.repository and name == "splade-tiny" else prepare_repository(name, model_dir)
        model = {"dir": model_dir, "repository": repository, "unfused": unfused_onnx(name, model_dir)}
        config = AutoConfig.from_pretrained(model_dir)
        tokenizer = workloads.load_tokenizer(model["repository"] / "splade_tokenizer" / "1" / "tokenizer.json")
        small = name == "splade-tiny"
        n = counts or {"queries": 512 if small else 128, "passages": 256 if small else 48}
        entry = report["models"][name] = {}
        served = Served(model["repository"], BUILD / f"{name}-server.log")
        try:
            for kind in args.workloads.split(","):
                texts = workloads.make(tokenizer, kind, n[kind])
                tokens = workloads.mean_tokens(tokenizer, texts)
                gflop = flops.flops_per_text(config, round(tokens)) / 1e9
                data = workloads.write_perf_analyzer_json(texts, BUILD / f"{name}-{kind}.json")
                workloads.write_plain(texts, BUILD / f"{name}-{kind}.txt")
                w = entry[kind] = {"texts": len(texts), "mean_tokens": round(tokens, 1), "gflop_per_text": round(gflop, 3)}
                print(f"[{name} {kind}] {len(texts)} texts, {tokens:.1f} tokens, {gflop:.2f} GFLOP each", flush=True)
                w["served"] = {}
                for protocol in args.protocols.split(","):
                    for c in sweep:
                        # --quick only checks that everything runs: any stability will do.
                        r = run_perf_analyzer(pa, served, protocol, data, c, interval, 1000 if args.quick else 20)
                        r["gflops"] = round(r["texts_per_s"] * gflop, 1)
                        w["served"][f"{protocol}_c{c}"] = r
                        print(f"  {protocol} c={c}: {r['texts_per_s']:.1f} texts/s p50 {r['p50_ms']:.1f} ms "
                              f"p99 {r['p99_ms']:.1f} ms {r['stages']}", flush=True)
                if not args.skip_in_process:
                    bs = [1, 8, 32] if kind == "queries" else [4, 16]
                    w["in_process"] = {k: round(v, 1) for k, v in in_process(model, texts, args.threads, repeat, bs).items()}
                    print(f"  in process: {w['in_process']}", flush=True)
                    w["int8"] = int8_figures(name, model, texts, args.threads, repeat, max(bs))
                    print(f"  int8: {w['int8']}", flush=True)
        finally:
            served.stop()

    report["peak_gflops"] = peak
    args.out.mkdir(parents=True, exist_ok=True)
    name = "benchmarks-quick.json" if args.quick else "benchmarks.json"
    (args.out / name).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / name}")
    if not args.quick and not args.repository:
        from bench import report as render

        render.write(report, args.out)
    print("done", flush=True)


if __name__ == "__main__":
    main()
