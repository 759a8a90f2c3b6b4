"""Validate a TensorRT plan against ONNX Runtime FP32 on a few hundred texts, with the fidelity gate.

Both run the same padded batches (lengths rounded up like the GPU tokenizer,
mixed lengths in each batch, so the padding mask is exercised), and the
outputs go through the one fidelity gate of every lower precision
(``splade_triton.artifacts.fidelity.gate_outputs``, the CPU bf16 / int8 gate's):

- SPLADE: the top-50 recall of the weights log1p(relu(.)), pooled over texts
  and on the worst text;
- BGE-M3: the dense vector's cosine on every text, the lexical weights'
  top-50 recall, every real token's ColBERT vector's cosine.

Fails (status 1) when the gate fails, or, for an FP32 SPLADE plan, when the
max abs difference exceeds ``--fp32-tolerance``. ``--record`` adds the
figures to the plan's provenance JSON.

Needs TensorRT, a CUDA GPU and the CUDA runtime library (the GPU image has
them); without them it exits at once, status 3, with one line.

    python -m export.validate_engine --plan build/engine/model.plan
    python -m export.validate_engine --pipeline pipelines/bge_m3.toml --plan PLAN
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

from splade_triton.artifacts.fidelity import gate_outputs
from splade_triton.artifacts.gpu_probe import Unavailable, require_tensorrt
from splade_triton.artifacts.numerics import padded_batches, validation_texts
from splade_triton.artifacts.provenance import provenance_path
from splade_triton.artifacts.gpu_pipeline import DEFAULT_SPEC, GpuPipeline
from splade_triton.artifacts.repository import ROOT
from splade_triton.serving.tokens import load_tokenizer

_H2D, _D2H = 1, 2


class CudaRuntime:
    """The few CUDA runtime calls needed to feed an engine, through ctypes
    (no torch, pycuda or cuda-python in the image)."""

    def __init__(self):
        candidates = ["libcudart.so.12", "libcudart.so.13", "libcudart.so"]
        candidates += sorted(glob.glob(str(Path(sys.prefix) / "lib" / "python3*" / "site-packages" / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so*")))
        for name in candidates:
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise Unavailable("the CUDA runtime library (libcudart.so.12) is not installed")
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        stream = ctypes.c_void_p()
        self._call("cudaStreamCreate", ctypes.byref(stream))
        self.stream = stream.value or 0

    def _call(self, fn: str, *args) -> None:
        status = getattr(self.lib, fn)(*args)
        if status != 0:
            raise RuntimeError(f"{fn} failed: {self.lib.cudaGetErrorString(status).decode()}")

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self._call("cudaMalloc", ctypes.byref(pointer), ctypes.c_size_t(nbytes))
        return pointer.value

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._call("cudaMemcpy", ctypes.c_void_p(pointer), array.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(array.nbytes), _H2D)

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        self._call("cudaMemcpy", array.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(pointer), ctypes.c_size_t(array.nbytes), _D2H)

    def synchronize(self) -> None:
        self._call("cudaStreamSynchronize", ctypes.c_void_p(self.stream))


class Engine:
    """A deserialized plan run on padded int64 batches: every output, as the engine shapes it."""

    def __init__(self, trt, plan: Path, cuda: CudaRuntime):
        self.trt, self.cuda = trt, cuda
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan} does not deserialize with TensorRT {trt.__version__} on this GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.types = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        # Buffers for the largest shapes: the profile's max inputs and the outputs they give.
        max_shape = tuple(self.engine.get_tensor_profile_shape("input_ids", 0)[2])
        for name in ("input_ids", "attention_mask"):
            self.context.set_input_shape(name, max_shape)
        self.buffers = {name: cuda.malloc(int(np.prod(self._shape(name))) * self.types[name].itemsize)
                        for name in ("input_ids", "attention_mask", *self.outputs)}
        for name, pointer in self.buffers.items():
            self.context.set_tensor_address(name, pointer)

    def _shape(self, name: str) -> tuple:
        return tuple(self.context.get_tensor_shape(name))

    def run(self, ids: np.ndarray, mask: np.ndarray) -> dict:
        for name, array in (("input_ids", ids), ("attention_mask", mask)):
            self.context.set_input_shape(name, tuple(array.shape))
            self.cuda.to_device(self.buffers[name], array.astype(self.types[name]))
        if not self.context.execute_async_v3(self.cuda.stream):
            raise RuntimeError(f"engine execution failed for shape {ids.shape}")
        self.cuda.synchronize()
        out = {}
        for name in self.outputs:
            out[name] = np.empty(self._shape(name), dtype=self.types[name])
            self.cuda.to_host(out[name], self.buffers[name])
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.validate_engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, default=ROOT / "build" / "engine" / "model.plan")
    parser.add_argument("--pipeline", type=Path, default=DEFAULT_SPEC,
                        help="pipeline spec: its model directory (ONNX graph, tokenizer) and GPU settings")
    parser.add_argument("--onnx", type=Path, default=None, help="default: <the pipeline's model directory>/model.onnx")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fp32-tolerance", type=float, default=1e-3, help="max abs difference allowed for an FP32 plan")
    parser.add_argument("--record", action="store_true", help="add the figures to the plan's provenance JSON")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)

    trt, _, cuda = require_tensorrt("validate_engine", CudaRuntime)
    import onnxruntime as ort

    try:
        gpu_pipeline = GpuPipeline.load(args.pipeline, args.onnx)
    except ValueError as e:
        raise SystemExit(f"validate_engine: {e}") from None
    shapes, onnx_path = gpu_pipeline.shapes, gpu_pipeline.onnx
    provenance_file = provenance_path(args.plan)
    provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    precision = provenance.get("precision", "unknown")
    tokenizer = load_tokenizer(gpu_pipeline.tokenizer, shapes.max_length)
    texts = validation_texts(args.texts, list(tokenizer.get_vocab()), seed=0)
    batch_size = min(args.batch_size, shapes.encoder_max_batch_size)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    graph_outputs = [o.name for o in session.get_outputs()]
    engine = Engine(trt, args.plan, cuda)
    batches, reference, candidate, engine_seconds = [], [], [], 0.0
    for ids, mask in padded_batches(tokenizer, texts, shapes, batch_size):
        batches.append((ids, mask))
        reference.append(dict(zip(graph_outputs, session.run(None, {"input_ids": ids, "attention_mask": mask}))))
        started = time.perf_counter()
        candidate.append(engine.run(ids, mask))
        engine_seconds += time.perf_counter() - started
    kind = gpu_pipeline.pipeline.kind
    special, vocab = None, None
    if kind == "bge_m3":
        info = json.loads((gpu_pipeline.pipeline.model / "export_info.json").read_text())
        special, vocab = list(info["special_ids"].values()), int(info["vocab_size"])
    report = gate_outputs(kind, batches, reference, candidate, special, vocab)
    report.update(precision=precision, tensorrt_version=trt.__version__, engine_seconds=round(engine_seconds, 3),
                  batch_size=batch_size)
    failures = list(report["failures"])
    if kind == "splade" and precision == "fp32" and report["max_abs_diff"] > args.fp32_tolerance:
        failures.append(f"max abs diff {report['max_abs_diff']:.3g} > {args.fp32_tolerance:g} for an FP32 plan")
    report["passed"] = not failures
    print(f"validation of {args.plan.name} ({kind}, {precision}) on {report['texts']} texts vs ONNX Runtime FP32: "
          f"max abs diff {report['max_abs_diff']:.3g}, top-50 recall {report['topk_recall']:.4f} "
          f"(worst text {report['min_text_recall']:.3f})"
          + (f", dense cosine >= {report['dense_cosine_min']:.5f}, ColBERT token cosine >= "
             f"{report['colbert_cosine_min']:.5f}" if kind == "bge_m3" else ""))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    if args.record and provenance:
        provenance["validation"] = report
        provenance_file.write_text(json.dumps(provenance, indent=2) + "\n")
    if failures:
        raise SystemExit(f"validate_engine: {args.plan} fails: {'; '.join(failures)}")


if __name__ == "__main__":
    main()
