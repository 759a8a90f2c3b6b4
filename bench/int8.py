"""int8 dynamic quantization of the fused encoder: speed-up and fidelity against fp32.

ONNX Runtime's dynamic quantization (weights int8 per channel, activations
quantized at run time; VNNI kernels on CPUs that have them) of every MatMul
with constant weights. The vocabulary projection stays fp32 (its weight
reaches the MatMul through a Transpose, so the quantizer leaves it alone).
Fidelity: for each text, the share of its fp32 top-50 non-zero terms that are
also among the int8 top-50 non-zero terms, and the max abs weight difference.
The project's bar for shipping it: recall >= 0.98.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from splade_triton.serving.splade import activate


def quantize(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not dst.is_file():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    return dst


def top_terms(weights: np.ndarray, k: int = 50) -> list[set[int]]:
    return [set(i for i in np.argsort(-row)[:k].tolist() if row[i] > 0) for row in weights]


def compare(fp32: Path, int8: Path, feeds: list[dict], count: int, threads: int, repeat: int) -> dict:
    from bench.run import ort_session

    out, rates = {}, {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = ort_session(path, threads)
        session.run(None, feeds[0])
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            results = [session.run(None, f)[0] for f in feeds]
            times.append(time.perf_counter() - start)
        rates[name] = count / float(np.median(times))
        out[name] = activate(np.concatenate(results))
    reference, quantized = top_terms(out["fp32"]), top_terms(out["int8"])
    recall = float(np.mean([len(r & q) / max(len(r), 1) for r, q in zip(reference, quantized)]))
    return {
        "fp32_texts_per_s": round(rates["fp32"], 1),
        "int8_texts_per_s": round(rates["int8"], 1),
        "speedup": round(rates["int8"] / rates["fp32"], 2),
        "recall_top50": round(recall, 4),
        "max_abs_diff": round(float(np.abs(out["fp32"] - out["int8"]).max()), 4),
        "kept": recall >= 0.98,
    }
