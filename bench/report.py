"""Render bench/run.py's JSON as docs/benchmarks.md and docs/benchmarks.png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABELS = {
    "served": "Triton ensemble (best concurrency)",
    "ort_fused": "ONNX Runtime in process, fused graph",
    "unfused": "Unfused: ORT logits + numpy pooling",
    "st": "sentence-transformers SparseEncoder",
}


def best_served(workload: dict, protocol: str) -> tuple[str, dict]:
    runs = {k: v for k, v in workload["served"].items() if k.startswith(protocol + "_")}
    key = max(runs, key=lambda k: runs[k]["texts_per_s"])
    return key, runs[key]


def summary(workload: dict) -> dict[str, float]:
    """texts/s of each method at its best setting."""
    out = {}
    for protocol in ("grpc", "http"):
        if any(k.startswith(protocol) for k in workload["served"]):
            out[f"served_{protocol}"] = best_served(workload, protocol)[1]["texts_per_s"]
    ip = workload.get("in_process", {})
    fused = {k: v for k, v in ip.items() if k.startswith("ort_fused")}
    if fused:
        out["ort_fused_best"] = max(fused.values())
        out["ort_fused_grouped_best"] = max(v for k, v in fused.items() if k.endswith("grouped"))
    for k, v in ip.items():
        if k.startswith("unfused"):
            out["unfused"] = v
        if k.startswith("sentence_transformers"):
            out["sentence_transformers"] = v
    return out


def targets(report: dict) -> list[tuple[str, str, bool]]:
    rows = []
    peak = report["peak_gflops"]
    for name, model in report["models"].items():
        p = model.get("passages")
        if p and "in_process" in p:
            s = summary(p)
            r_ort = s["served_grpc"] / s["ort_fused_grouped_best"]
            r_st = s["served_grpc"] / s["sentence_transformers"]
            need_st = 3.0 if name == "splade-tiny" else 2.0
            rows.append((f"{name} passages: gRPC ensemble >= 0.9x in-process ORT (grouped, best batch)", f"{r_ort:.2f}x", r_ort >= 0.9))
            rows.append((f"{name} passages: gRPC ensemble >= {need_st:g}x sentence-transformers", f"{r_st:.2f}x", r_st >= need_st))
            if name != "splade-tiny":
                g = s["served_grpc"] * p["gflop_per_text"]
                rows.append((f"{name} passages: >= 65% of the GEMM peak through the ensemble", f"{g:.0f} GFLOP/s = {g / peak:.0%} of {peak:.0f}", g / peak >= 0.65))
        q = model.get("queries")
        if name == "splade-tiny" and q and "grpc_c1" in q["served"]:
            p50 = q["served"]["grpc_c1"]["p50_ms"]
            rows.append(("splade-tiny, one query per request, concurrency 1: gRPC p50 <= 3 ms", f"{p50:.2f} ms", p50 <= 3.0))
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, by `.venv/bin/python -m bench.run` "
        f"(one run; in-process figures are the median of 3 repetitions). Python {m['python']}, ONNX Runtime "
        f"{m['onnxruntime']}, torch {m['torch']}, transformers {m['transformers']}, sentence-transformers "
        f"{m['sentence_transformers']}, tritonserver {m['tritonserver']}, perf_analyzer from {m['perf_analyzer']}.",
        "",
        f"fp32 GEMM peak (2048^3 MatMul, best of 5): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in m["gemm_gflops"].items()) + ".",
        "In-process baselines use 2 threads (the machine's cores); the server uses the repository's defaults.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in targets(report)]
    for name, model in report["models"].items():
        lines += ["", f"## {name}", ""]
        for kind, w in model.items():
            lines += [f"### {kind}: {w['texts']} texts, mean {w['mean_tokens']} tokens, {w['gflop_per_text']} GFLOP each", ""]
            s = summary(w)
            base = s.get("ort_fused_grouped_best")
            lines += ["| method | texts/s | GFLOP/s | vs ORT in process |", "|---|---|---|---|"]
            for key, label in (
                ("served_grpc", "Triton ensemble, gRPC (best concurrency)"),
                ("served_http", "Triton ensemble, HTTP (best concurrency)"),
                ("ort_fused_grouped_best", "ONNX Runtime in process, fused graph, grouped by length (best batch)"),
                ("ort_fused_best", "ONNX Runtime in process, fused graph (best of all settings)"),
                ("unfused", "unfused: ORT [batch, seq, vocab] logits + numpy pooling"),
                ("sentence_transformers", "sentence-transformers SparseEncoder (batch 32)"),
            ):
                if key in s:
                    ratio = f"{s[key] / base:.2f}x" if base else ""
                    lines.append(f"| {label} | {s[key]:.1f} | {s[key] * w['gflop_per_text']:.0f} | {ratio} |")
            lines += ["", "| perf_analyzer | texts/s | p50 ms | p99 ms | per model: texts/execution, queue ms, compute input/infer/output ms (per request) | CPU core-ms per text |", "|---|---|---|---|---|---|"]
            for key, r in w["served"].items():
                stages = "; ".join(
                    f"{n} {v['texts_per_execution']}, {v['queue_ms']}, {'/'.join(map(str, v['compute_ms']))}"
                    for n, v in r["stages"].items() if n != "splade"
                )
                cpu = ", ".join(f"{n} {v:.2f}" for n, v in r.get("cpu_ms_per_text", {}).items())
                lines.append(f"| {key} | {r['texts_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {stages} | {cpu} |")
            if "in_process" in w:
                lines += ["", "In process (texts/s): " + ", ".join(f"{k} {v}" for k, v in w["in_process"].items()) + "."]
            lines.append("")
    int8_rows = [(n, k, w["int8"]) for n, model in report["models"].items() for k, w in model.items() if "int8" in w]
    if int8_rows:
        lines += [
            "## int8 dynamic quantization (opt-in candidate)",
            "",
            "ONNX Runtime dynamic quantization of the fused graph (`bench/int8.py`), in process, same texts and",
            "threads. Recall: share of each text's fp32 top-50 non-zero terms also in the int8 top-50. The project",
            "ships it only at recall >= 0.98. Recall on the random-weight model says little about a trained one.",
            "",
            "| model | workload | fp32 texts/s | int8 texts/s | speed-up | recall top-50 | max abs diff | kept |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {k} | {q['fp32_texts_per_s']} | {q['int8_texts_per_s']} | {q['speedup']}x | {q['recall_top50']} | "
            f"{q['max_abs_diff']} | {'yes' if q['kept'] else 'no'} |"
            for n, k, q in int8_rows
        ]
        lines.append("")
    example = next(iter(next(iter(report["models"].values())).values()))["served"]
    lines += [
        "## Commands",
        "",
        "```",
        ".venv/bin/python -m bench.run",
        "# each served figure is one perf_analyzer run, e.g.",
        next(iter(example.values()))["command"],
        "```",
        "",
        "Workloads come from `bench/workloads.py` (deterministic, built from the tokenizer's whole-word",
        "vocabulary); the perf_analyzer `--input-data` files and plain-text copies are written under `build/bench/`.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, k, w) for n, model in report["models"].items() for k, w in model.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    keys = [("served_grpc", "Triton gRPC"), ("served_http", "Triton HTTP"), ("ort_fused_grouped_best", "ORT in process"),
            ("unfused", "unfused"), ("sentence_transformers", "sentence-\ntransformers")]
    for ax, (name, kind, w) in zip(axes[0], panels):
        s = summary(w)
        shown = [(label, s[k]) for k, label in keys if k in s]
        ax.bar([l for l, _ in shown], [v for _, v in shown], color=["#2a6f97", "#61a5c2", "#555", "#999", "#c44"][: len(shown)])
        ax.set_title(f"{name}, {kind}")
        ax.set_ylabel("texts / s")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.suptitle(f"SPLADE encoding throughput, {report['machine']['cores']} CPU cores ({report['machine']['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the text before its first "## " heading, [(heading line, the section)])."""
    parts = ("\n" + text).split("\n## ")
    return parts[0].strip("\n"), [(part.split("\n", 1)[0], "## " + part.rstrip("\n")) for part in parts[1:]]


def write_sections(path: Path, text: str) -> None:
    """Write ``text``'s "## " sections into ``path``: each replaces the section of the same
    heading where it stood, a new one is appended, the file's other sections stay
    (each bench command owns its sections of docs/benchmarks.md, not the file)."""
    head, new = _sections(text)
    old_head, old = _sections(path.read_text()) if path.is_file() else ("", [])
    replaced = dict(new)
    merged = [replaced.pop(heading, section) for heading, section in old] + list(replaced.values())
    path.write_text("\n\n".join(filter(None, [head or old_head, *merged])) + "\n")


def write(report: dict, out: Path) -> None:
    write_sections(out / "benchmarks.md", markdown(report))
    plot(report, out / "benchmarks.png")
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.png'}")


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks.json")
    write(json.loads(path.read_text()), path.parent)
