"""The autoscaling signal under load: which per-pod figure rises with the requests in flight.

    .venv/bin/python -m bench.autoscaling                                  # model_repository/, 1..64 in flight
    .venv/bin/python -m bench.autoscaling --levels 1,4,16,64 --seconds 20 --output build/bench/autoscaling.json

Serves ``--repository`` through the launcher (harness, free ports), then for each
level keeps N gRPC requests of ``--passages`` ~100-word passages in flight on the
``splade`` ensemble (N threads, one request each), and reads Triton's /metrics
before and after ``--seconds`` of load (after ``--warmup``). From the counters'
differences, per model: queue time over compute time (the HPA's first metric)
and queue time per request (the one it uses now: deploy/k8s/monitoring/
prometheus-rule.yaml). Prints a JSON report and a markdown table; figures only,
no assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench import workloads
from splade_triton.launcher.harness import Launched
from splade_triton.serving.tokens import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "build" / "models" / "splade-tiny"
COUNTERS = ("nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_request_success", "nv_inference_exec_count")
SAMPLE = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def counters(metrics_url: str) -> dict[tuple[str, str], float]:
    """(counter, model) -> value, summed over versions, from Triton's /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = defaultdict(float)
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) in COUNTERS:
            model = re.search(r'model="([^"]+)"', m.group(2)).group(1)
            out[(m.group(1), model)] += float(m.group(3))
    return out


def machine() -> dict:
    flags = ""
    model = platform.processor()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line
    isa = [f for f in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f" {f}" in flags]
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def level(server: Launched, texts: list[str], in_flight: int, passages: int, warmup: float, seconds: float) -> dict:
    import tritonclient.grpc as grpcclient

    stop = threading.Event()
    latencies: list[tuple[float, float]] = []
    errors: list[str] = []

    def worker(k: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        requested = [grpcclient.InferRequestedOutput("indices"), grpcclient.InferRequestedOutput("values")]
        i = k * passages
        while not stop.is_set():
            batch = [texts[(i + j) % len(texts)].encode() for j in range(passages)]
            tensor = grpcclient.InferInput("text", [passages, 1], "BYTES")
            tensor.set_data_from_numpy(np.array(batch, dtype=object).reshape(-1, 1))
            start = time.monotonic()
            try:
                client.infer("splade", [tensor], outputs=requested, client_timeout=120)
                latencies.append((start, time.monotonic() - start))
            except Exception as e:  # an overload refusal is a figure too
                errors.append(str(e)[:120])
            i += in_flight * passages

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(in_flight)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    before, begin = counters(server.metrics_url), time.monotonic()
    time.sleep(seconds)
    after, end = counters(server.metrics_url), time.monotonic()
    load = os.getloadavg()[0]
    stop.set()
    for t in threads:
        t.join()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    models = sorted({m for _, m in delta})
    per_model = {}
    for m in models:
        queue, compute = delta[("nv_inference_queue_duration_us", m)], delta[("nv_inference_compute_infer_duration_us", m)]
        success, execs = delta[("nv_inference_request_success", m)], delta[("nv_inference_exec_count", m)]
        per_model[m] = {
            "requests": int(success),
            "queue_over_compute": round(queue / compute, 3) if compute else 0.0,
            "queue_ms_per_request": round(queue / success / 1e3, 1) if success else 0.0,
            "compute_ms_per_request": round(compute / success / 1e3, 1) if success else 0.0,
            "requests_per_execution": round(success / execs, 1) if execs else 0.0,
        }
    window = [lat for start, lat in latencies if begin <= start + lat <= end]
    ms = np.array(window) * 1e3 if window else np.zeros(1)
    return {"in_flight": in_flight, "seconds": round(end - begin, 1), "load_average": round(load, 2),
            "requests_per_s": round(len(window) / (end - begin), 1),
            "client_p50_ms": round(float(np.percentile(ms, 50)), 1),
            "client_p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": sorted(set(errors))[:3], "error_count": len(errors), "models": per_model}


def table(report: dict, encoder: str) -> str:
    rows = report["levels"]
    head = "| requests in flight | " + " | ".join(str(r["in_flight"]) for r in rows) + " |"
    lines = [head, "|" + "---|" * (len(rows) + 1)]

    def line(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(r) for r in rows) + " |")

    line(f"queue per request, `{encoder}` (ms)", lambda r: f"{r['models'][encoder]['queue_ms_per_request']:.0f}")
    line(f"queue / compute, `{encoder}`", lambda r: f"{r['models'][encoder]['queue_over_compute']:.3f}")
    line(f"requests per execution, `{encoder}`", lambda r: f"{r['models'][encoder]['requests_per_execution']:.1f}")
    line("requests/s", lambda r: f"{r['requests_per_s']:.1f}")
    line("client p50 (ms)", lambda r: f"{r['client_p50_ms']:.0f}")
    line("load average", lambda r: f"{r['load_average']:.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--encoder", default="splade_encoder", help="the model whose figures the table shows")
    parser.add_argument("--levels", default="1,2,4,8,16,32,64", help="requests in flight, one run each")
    parser.add_argument("--passages", type=int, default=4, help="passages per request")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)

    texts = workloads.make(load_tokenizer(MODEL / "tokenizer.json"), "passages", 512)
    report = {"command": "python -m bench.autoscaling " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("repository", "output")),
              "machine": machine(), "load_average_before": round(os.getloadavg()[0], 2), "levels": []}
    log = Path(tempfile.mkdtemp(prefix="autoscaling-")) / "server.log"
    with Launched(args.repository, log) as server:
        for n in (int(x) for x in args.levels.split(",")):
            result = level(server, texts, n, args.passages, args.warmup, args.seconds)
            report["levels"].append(result)
            enc = result["models"].get(args.encoder, {})
            print(f"{n:4d} in flight: {args.encoder} queue {enc.get('queue_ms_per_request')} ms/request, "
                  f"queue/compute {enc.get('queue_over_compute')}, {result['requests_per_s']} requests/s, "
                  f"load {result['load_average']}", flush=True)
    print(json.dumps(report, indent=2))
    print(table(report, args.encoder))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
