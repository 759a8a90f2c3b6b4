#!/usr/bin/env python3
"""Serving-setting experiments: each variant is the repository with a few config lines
changed, measured by bench/run.py (served figures only), side by side.

    .venv/bin/python -m bench.tune                      # every variant, gRPC
    .venv/bin/python -m bench.tune --variants current,queue_delay_2ms

Writes build/tune/<variant>/ (the repository copies) and prints a markdown
table of texts/s and p50/p99 per workload and concurrency.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "tune"

# name -> [(model, pattern, replacement)], applied to model_repository/<model>/config.pbtxt
VARIANTS: dict[str, list[tuple[str, str, str]]] = {
    "current": [],
    "queue_delay_2ms": [
        (m, r"max_queue_delay_microseconds: \d+", "max_queue_delay_microseconds: 2000")
        for m in ("tokenizer", "encoder", "sparsify")
    ],
    "encoder_2x1_threads": [
        ("encoder", r"instance_group \[ \{ count: \d+", "instance_group [ { count: 2"),
        ("encoder", r'"intra_op_threads", value: \{ string_value: "\d+" \}', '"intra_op_threads", value: { string_value: "1" }'),
    ],
    "encoder_1x2_threads": [
        ("encoder", r"instance_group \[ \{ count: \d+", "instance_group [ { count: 1"),
        ("encoder", r'"intra_op_threads", value: \{ string_value: "\d+" \}', '"intra_op_threads", value: { string_value: "2" }'),
    ],
    "max_batch_tokens_2048": [
        ("encoder", r'"max_batch_tokens", value: \{ string_value: "\d+" \}', '"max_batch_tokens", value: { string_value: "2048" }'),
    ],
    "max_batch_tokens_32768": [
        ("encoder", r'"max_batch_tokens", value: \{ string_value: "\d+" \}', '"max_batch_tokens", value: { string_value: "32768" }'),
    ],
    "graph_extended": [
        ("encoder", r'"graph_optimization_level", value: \{ string_value: "\w+" \}', '"graph_optimization_level", value: { string_value: "extended" }'),
    ],
    "sparsify_2_instances": [
        ("sparsify", r"instance_group \[ \{ count: \d+", "instance_group [ { count: 2"),
    ],
}


def make_variant(name: str, repository: Path) -> Path:
    target = OUT / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(repository, target, ignore=shutil.ignore_patterns("__pycache__"))
    for model, pattern, replacement in VARIANTS[name]:
        config = target / model / "config.pbtxt"
        text, count = re.subn(pattern, replacement, config.read_text())
        if count == 0:
            raise SystemExit(f"variant {name}: pattern {pattern!r} not found in {model}/config.pbtxt")
        config.write_text(text)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--protocols", default="grpc")
    parser.add_argument("--workloads", default="queries,passages")
    args = parser.parse_args(argv)

    rows = []
    for name in args.variants.split(","):
        repository = make_variant(name, args.repository)
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
