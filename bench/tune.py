#!/usr/bin/env python3
"""Serving-setting experiments: each variant is the repository with a few config lines
changed, measured by bench/run.py (served figures only), side by side.

    .venv/bin/python -m bench.tune                      # every variant, gRPC
    .venv/bin/python -m bench.tune --variants current,queue_delay_2ms

Writes build/tune/<variant>/ (the assembled variants) and prints a markdown
table of texts/s and p50/p99 per workload and concurrency.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from splade_triton.artifacts.repository import assemble, default_pipelines

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "tune"

# name -> {step: {"parameters": {...}, "config": "<config.pbtxt text>"}}, merged into the
# default pipeline's settings (lists such as instance_group replace the template's).
VARIANTS: dict[str, dict[str, dict]] = {
    "current": {},
    "queue_delay_2ms": {
        m: {"config": "dynamic_batching { max_queue_delay_microseconds: 2000 }"} for m in ("tokenizer", "encoder", "sparsify")
    },
    "encoder_2x1_threads": {"encoder": {"config": "instance_group [ { count: 2, kind: KIND_CPU } ]",
                                        "parameters": {"intra_op_threads": "1"}}},
    "encoder_1x2_threads": {"encoder": {"config": "instance_group [ { count: 1, kind: KIND_CPU } ]",
                                        "parameters": {"intra_op_threads": "2"}}},
    "max_batch_tokens_2048": {"encoder": {"parameters": {"max_batch_tokens": "2048"}}},
    "max_batch_tokens_32768": {"encoder": {"parameters": {"max_batch_tokens": "32768"}}},
    "graph_extended": {"encoder": {"parameters": {"graph_optimization_level": "extended"}}},
    "sparsify_2_instances": {"sparsify": {"config": "instance_group [ { count: 2, kind: KIND_CPU } ]"}},
}


def make_variant(name: str) -> Path:
    """The default pipeline with the variant's settings, assembled under build/tune/<name>."""
    pipeline = next(p for p in default_pipelines() if p.name == "splade")
    for step, settings in VARIANTS[name].items():
        pipeline = pipeline.with_step(step, settings.get("parameters"), settings.get("config"))
    return assemble(OUT / name / "model_repository", [pipeline])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--protocols", default="grpc")
    parser.add_argument("--workloads", default="queries,passages")
    args = parser.parse_args(argv)

    rows = []
    for name in args.variants.split(","):
        repository = make_variant(name)
        out = OUT / f"{name}-report"
        subprocess.run(
            [sys.executable, "-m", "bench.run", "--models", "splade-tiny", "--repository", str(repository),
             "--skip-in-process", "--protocols", args.protocols, "--concurrency", args.concurrency,
             "--workloads", args.workloads, "--out", str(out)],
            cwd=ROOT, check=True,
        )
        report = json.loads((out / "benchmarks.json").read_text())
        for kind, w in report["models"]["splade-tiny"].items():
            for key, r in w["served"].items():
                rows.append((name, kind, key, r["texts_per_s"], r["p50_ms"], r["p99_ms"]))
        print(f"[{name}] done", flush=True)

    print("\n| variant | workload | run | texts/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for row in rows:
        print("| {} | {} | {} | {:.1f} | {:.2f} | {:.2f} |".format(*row))


if __name__ == "__main__":
    main()
