"""Lower precisions of an exported encoder: calibrated int8, and the fidelity gate of each.

For the exported model directory (python -m export.export_onnx):

1. int8: NNCF's calibrated static quantization on representative texts
   (splade_triton/artifacts/quantize.py) -> ``model.int8.xml`` / ``.bin``
   beside ``model.onnx`` (served with ``runtime=openvino precision=int8``).
2. The fidelity gate (splade_triton/artifacts/fidelity.py) of every
   runtime/precision against ONNX Runtime fp32: OpenVINO fp32, bf16 and int8,
   and (SPLADE) ONNX Runtime's dynamic int8 for comparison. A precision this
   CPU cannot run fast is recorded as refused, with the reason.
3. The figures and each gate's pass / fail go into ``export_info.json``
   under ``precisions`` (rewritten atomically).

    python -m export.quantize --model build/models/splade-tiny
    python -m export.quantize --model build/models/bge-m3-tiny

Exit status 0 whether or not a lower precision passes (fp32 always serves);
1 when OpenVINO fp32 differs from ONNX Runtime fp32 (it must be exact).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from splade_triton.artifacts import fidelity
from splade_triton.artifacts.quantize import calibration_batches, quantize_int8
from splade_triton.serving.runtime import INT8_FILE, check_precision, cpu_flags, open_session


def _record(model_dir: Path, precisions: dict) -> None:
    path = model_dir / "export_info.json"
    info = json.loads(path.read_text())
    info["precisions"] = precisions
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".export_info.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an exported model directory")
    parser.add_argument("--calibration-texts", type=int, default=256)
    parser.add_argument("--texts", type=int, default=64, help="varied texts of the gate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="print only; leave export_info.json")
    args = parser.parse_args(argv)
    model_dir = args.model
    info = json.loads((model_dir / "export_info.json").read_text())
    kind = info.get("kind", "splade")
    onnx = model_dir / "model.onnx"
    gate = fidelity.splade_fidelity if kind == "splade" else fidelity.bge_m3_fidelity
    max_length = int(info.get("max_length", 512))

    feeds = calibration_batches(model_dir, args.calibration_texts, max_length=min(max_length, 512))
    quantize_int8(onnx, model_dir / INT8_FILE, feeds)
    print(f"wrote {model_dir / INT8_FILE} ({len(feeds)} calibration batches)", flush=True)

    flags = cpu_flags()
    reference = open_session(str(onnx), "onnxruntime", "fp32", args.threads)
    results = {"reference": "onnxruntime fp32", "gate": fidelity.GATE}
    candidates = {"openvino_fp32": ("openvino", "fp32", onnx), "openvino_bf16": ("openvino", "bf16", onnx),
                  "openvino_int8": ("openvino", "int8", model_dir / INT8_FILE)}
    tmp = None
    if kind == "splade":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = tempfile.TemporaryDirectory()
        dynamic = Path(tmp.name) / "model.dynamic-int8.onnx"
        quantize_dynamic(str(onnx), str(dynamic), weight_type=QuantType.QInt8, per_channel=True)
        candidates["onnxruntime_dynamic_int8"] = ("onnxruntime", "fp32", dynamic)
    for name, (runtime, precision, path) in candidates.items():
        try:
            check_precision(runtime, precision, flags)
        except ValueError as e:
            results[name] = {"gate": "refused", "reason": str(e)}
            print(f"{name}: refused: {e}", flush=True)
            continue
        try:
            session = open_session(str(path), runtime, precision, args.threads)
        except ValueError as e:  # e.g. an IR the CPU plugin cannot compile
            lines = [line for line in str(e).splitlines() if line.strip()]
            cause = next((line for line in lines if line.startswith("Check")), lines[-1] if lines else "")
            results[name] = {"gate": "error", "reason": f"{lines[0] if lines else ''} {cause}"[:500]}
            print(f"{name}: cannot load: {e}", flush=True)
            continue
        figures = gate(reference, session, model_dir, texts=args.texts)
        results[name] = figures
        shown = {k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()
                 if k in ("topk_mass_recall", "min_text_mass_recall", "topk_recall", "min_text_recall", "max_abs_diff",
                          "nonzero_mismatches", "ndcg10", "ndcg10_fp32", "dense_cosine_min", "gate", "failures")}
        print(f"{name}: {shown}", flush=True)
    if tmp is not None:
        tmp.cleanup()
    fp32 = results["openvino_fp32"]
    exact = fp32["max_abs_diff"] <= 1e-4 and fp32["nonzero_mismatches"] == 0
    results["openvino_fp32"]["exact"] = exact
    if not args.no_record:
        _record(model_dir, results)
        print(f"recorded in {model_dir / 'export_info.json'} (precisions)")
    if not exact:
        print("error: OpenVINO fp32 differs from ONNX Runtime fp32 beyond 1e-4 or in its non-zero terms",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
