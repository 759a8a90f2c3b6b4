#!/usr/bin/env python3
"""CPU runtimes and precisions of the encoder, side by side (issue 11).

For SPLADE-tiny (trained) and a BERT-base-shaped SPLADE (random weights,
bench.run.prepare_bert_base), passages (~120 tokens, length-grouped batches of
16) and queries (batches of 32):

- in process, ``--threads`` threads: ONNX Runtime fp32, OpenVINO fp32, bf16 and
  int8 (NNCF calibrated, export.quantize's path) on the same fused graph, and
  sentence-transformers' SparseEncoder; top-50 recall vs ONNX Runtime fp32;
- served: the ``splade`` ensemble with each runtime/precision over gRPC
  (the launcher harness), one text per request, 16 in flight;
- the CPU's name and ISA flags; the GEMM peak (2048^3 MatMul) for fp32 (ONNX
  Runtime, OpenVINO) and bf16 (OpenVINO), so each precision's % of peak is stated;
- OpenVINO's cost for a new sequence length: the 1st and the 100th distinct length
  vs a length already seen (compiled once; no recompilation per shape).

Writes build/bench/runtimes.json and, with --write-docs, the section
"CPU runtimes and precisions" of docs/benchmarks.md (replaced in place, the
rest of the file kept). About 10 minutes on 2 cores.

    .venv/bin/python -m bench.runtimes [--write-docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench import flops, workloads
from bench.run import BUILD, ROOT, Served, batches, prepare_bert_base
from bench.run import best_rate as rate
from splade_triton.artifacts.numerics import compare_weights
from splade_triton.artifacts.quantize import calibration_batches, quantize_int8
from splade_triton.artifacts.repository import assemble, default_pipelines
from splade_triton.serving.runtime import INT8_FILE, ISA_FLAGS, check_precision, cpu_flags, open_session
from splade_triton.serving.splade import activate

VARIANTS = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
SECTION = "## CPU runtimes and precisions"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    flags = cpu_flags()
    shown = sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"}
                   or f.startswith("amx"))
    import onnxruntime
    import openvino

    return {"cpu": cpu, "cores": os.cpu_count(), "isa": shown, "load_average": os.getloadavg(),
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


def openvino_gemm_gflops(precision: str, threads: int, n: int = 2048, repeat: int = 5) -> float:
    """An [n, n] activation times a constant [n, n] weight, as in the encoder's layers (the
    weight is converted once at compile time); int8: the same MatMul quantized by NNCF."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    weight = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(a, weight, False, True)], [a])
    feeds = {"a": rng.standard_normal((n, n), dtype=np.float32)}
    if precision == "int8":
        import nncf

        model = nncf.quantize(model, nncf.Dataset([feeds]), subset_size=1, fast_bias_correction=True)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                                      "INFERENCE_NUM_THREADS": str(threads)})
    request = compiled.create_infer_request()
    request.infer(feeds)
    best = min(flops._timed(lambda: request.infer(feeds)) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def shape_costs(path: Path, threads: int) -> dict:
    """ms per call of 16 texts: a length already run, then 100 lengths never seen before."""
    session = open_session(str(path), "openvino", "fp32", threads)
    rng = np.random.default_rng(0)

    def call(length):
        ids = rng.integers(2000, 20000, size=(16, length)).astype(np.int64)
        start = time.perf_counter()
        session.run(["pooled_logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        return (time.perf_counter() - start) * 1000

    for _ in range(3):
        call(64)
    seen = float(np.median([call(64) for _ in range(5)]))
    lengths = [int(x) for x in rng.permutation(np.arange(65, 165))]  # 100 new lengths around 64..164
    new = [call(length) for length in lengths]
    again = [call(length) for length in lengths]
    # Per call, cost relative to the same length's second run (removes the length's own cost).
    ratio = [a / b for a, b in zip(new, again)]
    return {"seen_length_64_ms": round(seen, 2), "first_new_ratio": round(ratio[0], 3),
            "hundredth_new_ratio": round(ratio[-1], 3), "median_new_ratio": round(float(np.median(ratio)), 3),
            "compile_count": session.compile_count}


def sentence_transformers_rate(model_dir: Path, texts, threads: int, repeat: int) -> float:
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.models import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    torch.set_num_threads(threads)
    encoder = SparseEncoder(modules=[Transformer(str(model_dir), transformer_task="fill-mask", max_seq_length=512),
                                     SpladePooling("max")], device="cpu")
    return rate(lambda: encoder.encode(texts, batch_size=32, convert_to_tensor=True), len(texts), repeat)


def served_rate(url: str, texts: list[str], in_flight: int = 16) -> float:
    import tritonclient.grpc as grpcclient

    def worker(chunk):
        client = grpcclient.InferenceServerClient(url)
        for t in chunk:
            text = grpcclient.InferInput("text", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[t.encode()]], dtype=object))
            client.infer("splade", [text], outputs=[grpcclient.InferRequestedOutput("indices"),
                                                    grpcclient.InferRequestedOutput("values")])
        client.close()

    chunks = [texts[i::in_flight] for i in range(in_flight)]
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(worker, [c[:2] for c in chunks]))  # warm-up
        start = time.perf_counter()
        list(pool.map(worker, chunks))
    return len(texts) / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="splade-tiny,bert-base-random")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--note", default="", help="a sentence for the docs (e.g. what else ran on the machine)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other models' figures of build/bench/runtimes.json (rerun one model)")
    args = parser.parse_args(argv)
    flags = cpu_flags()
    report = {"machine": machine(), "command": "python -m bench.runtimes", "models": {}}
    gemm = report["gemm_gflops"] = {
        "onnxruntime_fp32": round(flops.onnxruntime_gemm_gflops(args.threads), 1),
        "openvino_fp32": round(openvino_gemm_gflops("fp32", args.threads), 1),
    }
    for precision in ("bf16", "int8"):
        try:
            check_precision("openvino", precision, flags)
            gemm[f"openvino_{precision}"] = round(openvino_gemm_gflops(precision, args.threads), 1)
        except ValueError as e:
            gemm[f"openvino_{precision}"] = None
            print(e)
    peak = {"fp32": max(gemm["onnxruntime_fp32"], gemm["openvino_fp32"]), "bf16": gemm["openvino_bf16"],
            "int8": gemm["openvino_int8"]}
    print("machine", report["machine"], "GEMM", gemm, flush=True)
    from transformers import AutoConfig

    pipeline = next(p for p in default_pipelines() if p.name == "splade")
    for name in args.models.split(","):
        if name == "splade-tiny":
            exported, model_dir = ROOT / "build" / "models" / "splade-tiny", ROOT / "models" / "splade-tiny"
        else:
            model_dir = prepare_bert_base(BUILD / name / "model")
            exported = BUILD / name / "exported"
            if not (exported / "model.onnx").is_file():  # as a module: the project is not installed
                subprocess.run([sys.executable, "-m", "export.export_onnx", "--model", str(model_dir),
                                "--output", str(exported)], check=True, cwd=ROOT)
        if not (exported / INT8_FILE).is_file():
            quantize_int8(exported / "model.onnx", exported / INT8_FILE,
                          calibration_batches(exported, 128 if name == "splade-tiny" else 48))
        config = AutoConfig.from_pretrained(model_dir)
        tokenizer = workloads.load_tokenizer(exported / "tokenizer.json")
        small = name == "splade-tiny"
        entry = report["models"][name] = {}
        if small:
            entry["new_length_cost"] = shape_costs(exported / "model.onnx", args.threads)
            print(name, entry["new_length_cost"], flush=True)
        sessions = {}
        for runtime, precision in VARIANTS:
            try:
                check_precision(runtime, precision, flags)
            except ValueError as e:
                entry.setdefault("refused", {})[f"{runtime}_{precision}"] = str(e)
                continue
            path = exported / (INT8_FILE if precision == "int8" else "model.onnx")
            sessions[f"{runtime}_{precision}"] = open_session(str(path), runtime, precision, args.threads)
        for kind, count, bs in (("passages", 128 if small else 32, 16), ("queries", 512 if small else 64, 32)):
            texts = workloads.make(tokenizer, kind, count)
            tokens = workloads.mean_tokens(tokenizer, texts)
            gflop = flops.flops_per_text(config, round(tokens)) / 1e9
            feeds = batches(tokenizer, texts, bs, True)
            w = entry[kind] = {"texts": count, "mean_tokens": round(tokens, 1), "batch": bs, "in_process": {},
                               "served_grpc": {}}
            reference = None
            for key, session in sessions.items():
                out = []
                r = rate(lambda: out.append([session.run(["pooled_logits"], f)[0] for f in feeds]), count, args.repeat)
                vectors = activate(np.concatenate(out[-1]))
                reference = vectors if reference is None else reference
                fig = compare_weights(reference, vectors, k=50)
                precision = key.rsplit("_", 1)[1]
                p = peak[precision]
                w["in_process"][key] = {"texts_per_s": round(r, 1), "gflops": round(r * gflop, 1),
                                        "pct_of_peak": round(100 * r * gflop / p, 1) if p else None,
                                        "recall_top50": round(fig["topk_recall"], 4),
                                        "worst_text_recall": round(fig["min_text_recall"], 4),
                                        "max_abs_diff": float(f"{fig['max_abs_diff']:.3g}")}
                print(name, kind, key, w["in_process"][key], flush=True)
            w["in_process"]["sentence_transformers"] = {
                "texts_per_s": round(sentence_transformers_rate(model_dir, texts, args.threads, args.repeat), 1)}
            print(name, kind, "st", w["in_process"]["sentence_transformers"], flush=True)
        del sessions
        for runtime, precision in VARIANTS:
            key = f"{runtime}_{precision}"
            if key in entry.get("refused", {}):
                continue
            variant = pipeline.with_step("encoder", parameters={"runtime": runtime, "precision": precision,
                                                                      "fidelity_gate": "warn"})
            repo = assemble(BUILD / name / f"repository-{key}", [dataclasses.replace(variant, model=exported)])
            served = Served(repo, BUILD / f"{name}-{key}-server.log")
            try:
                for kind, count in (("passages", 192 if small else 40), ("queries", 768 if small else 128)):
                    texts = workloads.make(tokenizer, kind, count, seed=1)
                    entry[kind]["served_grpc"][key] = round(served_rate(served.grpc_url, texts), 1)
                    print(name, kind, "served", key, entry[kind]["served_grpc"][key], flush=True)
            finally:
                served.stop()
    report["machine"]["load_average_end"] = os.getloadavg()
    report["note"] = args.note
    out = BUILD / "runtimes.json"
    if args.merge and out.is_file():
        earlier = json.loads(out.read_text())
        for name, entry in earlier["models"].items():
            if name not in report["models"]:
                entry["run"] = earlier["machine"]  # those figures' own load averages
                report["models"][name] = entry
        report["models"] = {k: report["models"][k] for k in ["splade-tiny", "bert-base-random", *report["models"]]
                            if k in report["models"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    text = render(report)
    print(text)
    if args.write_docs:
        from bench.report import write_sections

        write_sections(ROOT / "docs" / "benchmarks.md", text)


def render(report: dict) -> str:
    m, g = report["machine"], report["gemm_gflops"]
    lines = [SECTION, "",
             f"`{report['command']}` on {m['cpu']} ({m['cores']} cores; ISA: {', '.join(m['isa'])}), "
             f"onnxruntime {m['onnxruntime']}, openvino {m['openvino']}; load average at start "
             f"{', '.join(f'{x:.2f}' for x in m['load_average'])}, at end "
             f"{', '.join(f'{x:.2f}' for x in m['load_average_end'])}. {report.get('note', '')}",
             "",
             f"GEMM peak (2048^3 MatMul by a constant weight, 2 threads): fp32 ONNX Runtime {g['onnxruntime_fp32']} GFLOP/s, OpenVINO "
             f"{g['openvino_fp32']}; bf16 OpenVINO {g['openvino_bf16']}; int8 OpenVINO (NNCF) {g['openvino_int8']} "
             "(GOP/s). % of peak: each precision against its own peak. Recall: top-50 terms vs ONNX Runtime fp32 on the benchmark texts "
             "(pooled; worst text); on the random-weight model it says little.", ""]
    for name, entry in report["models"].items():
        if "new_length_cost" in entry:
            c = entry["new_length_cost"]
            lines += [f"{name}, OpenVINO fp32, batches of 16: a length already run {c['seen_length_64_ms']} ms; "
                      f"a length never seen, relative to its own second run: 1st {c['first_new_ratio']}x, "
                      f"100th {c['hundredth_new_ratio']}x, median {c['median_new_ratio']}x; compiled "
                      f"{c['compile_count']} time(s).", ""]
        if "run" in entry:
            lines += [f"{name}: figures of an earlier run (load average at start "
                      f"{', '.join(f'{x:.2f}' for x in entry['run']['load_average'])}, at end "
                      f"{', '.join(f'{x:.2f}' for x in entry['run']['load_average_end'])}).", ""]
        else:
            lines += [f"{name}: figures of this run.", ""]
        for kind in ("passages", "queries"):
            w = entry[kind]
            lines += [f"### {name}, {kind}: {w['texts']} texts, mean {w['mean_tokens']} tokens, in-process batches "
                      f"of {w['batch']} grouped by length", "",
                      "| runtime / precision | in process texts/s | GFLOP/s | % of peak | recall top-50 (worst) | "
                      "served gRPC texts/s (16 in flight) |", "|---|---|---|---|---|---|"]
            for key, f in w["in_process"].items():
                if key == "sentence_transformers":
                    lines.append(f"| sentence-transformers SparseEncoder | {f['texts_per_s']} | | | | |")
                    continue
                lines.append(f"| {key.replace('_', ' ')} | {f['texts_per_s']} | {f['gflops']} | {f['pct_of_peak']} | "
                             f"{f['recall_top50']} ({f['worst_text_recall']}) | {w['served_grpc'].get(key, '')} |")
            lines.append("")
        for key, reason in entry.get("refused", {}).items():
            lines.append(f"- {key}: {reason}")
    lines += defaults(report)
    return "\n".join(lines) + "\n"


# OpenVINO fp32 over ONNX Runtime fp32 (geometric mean of the shapes) that makes it the default.
FASTER = 1.05


def defaults(report: dict) -> list[str]:
    """The rule for the encoder's defaults, applied to this run's figures and the recorded gates."""
    lines = ["### Defaults", "",
             "Rule: the fp32 runtime of the SPLADE kind is the faster one over the shapes measured (the geometric "
             "mean of OpenVINO / ONNX Runtime over queries and passages, in process and served, both models), "
             f"OpenVINO where that mean is >= {FASTER:.2f}x (these VMs drift by about 5%: less is a tie, and the tie "
             "keeps ONNX Runtime); both give the same vectors within 1e-4 (`python -m export.quantize` checks it). "
             "A lower precision is never a default: it is served where it passes the fidelity gate on a trained "
             "model (SPLADE-tiny, `python -m export.quantize`, recorded in its export_info.json) and is asked for.", ""]
    ratios, values = [], []
    for name, entry in report["models"].items():
        for kind in ("passages", "queries"):
            w = entry[kind]
            ort, ov = w["in_process"].get("onnxruntime_fp32"), w["in_process"].get("openvino_fp32")
            if ort and ov:
                values.append(ov["texts_per_s"] / ort["texts_per_s"])
                if w["served_grpc"].get("onnxruntime_fp32") and w["served_grpc"].get("openvino_fp32"):
                    values.append(w["served_grpc"]["openvino_fp32"] / w["served_grpc"]["onnxruntime_fp32"])
                ratios.append(f"{name} {kind} {ov['texts_per_s'] / ort['texts_per_s']:.2f}x in process"
                              + (f", {w['served_grpc']['openvino_fp32'] / w['served_grpc']['onnxruntime_fp32']:.2f}x served"
                                 if w["served_grpc"].get("onnxruntime_fp32") else ""))
    lines.append("- OpenVINO fp32 / ONNX Runtime fp32: " + "; ".join(ratios) + ".")
    info = ROOT / "build" / "models" / "splade-tiny" / "export_info.json"
    gates = json.loads(info.read_text()).get("precisions", {}) if info.is_file() else {}
    for key in ("openvino_bf16", "openvino_int8", "onnxruntime_dynamic_int8"):
        g = gates.get(key)
        if isinstance(g, dict) and "topk_recall" in g:
            lines.append(f"- SPLADE-tiny gate, {key.replace('_', ' ')}: {g['gate']} (top-50 weight recall "
                         f"{g.get('topk_mass_recall', float('nan')):.4f}, worst text "
                         f"{g.get('min_text_mass_recall', float('nan')):.4f}; by term count {g['topk_recall']:.4f}, "
                         f"worst {g['min_text_recall']:.4f}; nDCG@10 {g['ndcg10']:.4f} vs fp32 {g['ndcg10_fp32']:.4f}).")
    lines.append("- The retrieval fixture (tests/fixtures/beir_tiny: 40 documents on distinct topics) is easy: every "
                 "precision ranks it as fp32 does, so on it the nDCG@10 condition never decides; the term recalls do.")
    m3 = ROOT / "build" / "models" / "bge-m3-tiny" / "export_info.json"
    m3_gates = json.loads(m3.read_text()).get("precisions", {}) if m3.is_file() else {}
    for key in ("openvino_bf16", "openvino_int8"):
        g = m3_gates.get(key)
        if isinstance(g, dict) and "dense_cosine_min" in g:
            lines.append(f"- BGE-M3 tiny fixture (random weights: a check that the path works, not evidence of "
                         f"fidelity), {key.replace('_', ' ')}: {g['gate']} (dense cosine min {g['dense_cosine_min']:.6f}, "
                         f"lexical top-50 recall {g['topk_recall']:.4f}, worst {g['min_text_recall']:.4f}).")
        elif isinstance(g, dict):
            lines.append(f"- BGE-M3 tiny fixture, {key.replace('_', ' ')}: {g.get('gate')}: {g.get('reason', '')}")
    passed = [k for k in ("openvino_bf16", "openvino_int8") if isinstance(gates.get(k), dict) and gates[k].get("gate") == "pass"]
    mean = float(np.exp(np.mean(np.log(values)))) if values else 1.0
    runtime = "openvino" if mean >= FASTER else "onnxruntime"
    lines += ["", f"Chosen: `runtime {runtime}`, `precision fp32` "
              + (f"(OpenVINO fp32 / ONNX Runtime: geometric mean {mean:.2f}x, range {min(values):.2f}x-{max(values):.2f}x)"
                 if values else "")
              + ("; no lower precision passed the gate on SPLADE-tiny, so none is a default: bf16 / int8 stay "
                 "opt-in (`precision`, with `fidelity_gate warn` for a model whose gate failed)" if not passed else
                 f"; {', '.join(passed)} passed the gate on SPLADE-tiny") + "."]
    return lines


if __name__ == "__main__":
    main()
