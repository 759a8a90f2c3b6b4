"""CUDA FP16 numerics and GPU throughput of the exported SPLADE encoder, without TensorRT.

What a GPU machine without TensorRT can check of the GPU path: the same
model in reduced precision through torch (and the exported graph through
onnxruntime's CUDA provider when present), against ONNX Runtime FP32 on CPU,
on the varied validation texts, with ``export.validate_engine``'s metrics
(max abs difference of the SPLADE weights, recall of each text's top-50
terms). Modes:

- ``fp32``: torch FP32 on the GPU, TF32 off (the kernels differ, not the math);
- ``fp16-engine-like``: what the FP16 TensorRT engine computes: weights and
  activations in FP16, LayerNorm and softmax in FP32, the vocabulary
  projection from FP16 inputs with FP32 output, max and bias in FP32;
- ``fp16-autocast``: torch.autocast's own policy (keeps the residual stream
  in FP32: more accurate than the engine);
- ``fp16-naive``: everything FP16, projection output rounded to FP16 before
  the max: what keeping those parts in FP32 buys.

Then encoder throughput (texts/s) at full batches of 32, 128 and 512 tokens.

Without a CUDA GPU it exits at once, status 3, with one line.
``--emulate-on-cpu`` runs the same modes on the CPU instead (torch's CPU FP16
kernels: an emulation of the rounding, not a GPU measurement; it says so).

    python -m export.check_gpu_numerics --json-out docs/gpu_numerics.json
    python -m export.check_gpu_numerics --bert-base       # throughput of a BERT-base-sized model too
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from splade_triton.artifacts.gpu_probe import EXIT_UNAVAILABLE, missing_message
from splade_triton.artifacts.numerics import compare_weights, padded_batches, validation_texts
from splade_triton.artifacts.onnx_graph import without_decoder
from splade_triton.artifacts.gpu_pipeline import DEFAULT_SPEC, GpuPipeline
from splade_triton.artifacts.repository import ROOT
from splade_triton.serving.splade import activate
from splade_triton.serving.tokens import load_tokenizer

MODES = ("fp32", "fp16-engine-like", "fp16-autocast", "fp16-naive")


def _cuda_status() -> tuple[bool, bool, str]:
    """(torch sees a CUDA GPU, onnxruntime has its CUDA provider, why not)."""
    reasons = []
    torch_cuda = False
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
        if not torch_cuda:
            reasons.append(f"torch {torch.__version__} sees no CUDA GPU")
    except ImportError:
        reasons.append("torch is not installed")
    import onnxruntime as ort

    ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if not ort_cuda:
        reasons.append(f"onnxruntime {ort.__version__} has no CUDA provider")
    return torch_cuda, ort_cuda, "; ".join(reasons)


class PooledEncoder:
    """The fused graph's computation in torch, with a chosen precision policy."""

    def __init__(self, mlm, device: str, mode: str):
        import torch

        self.torch, self.mode, self.device = torch, mode, device
        self.mlm = mlm.to(device)
        decoder = mlm.get_output_embeddings()
        # Copies taken before any .half(): the FP32 weights of the projection.
        self.weight = decoder.weight.detach().clone().float()
        self.bias = decoder.bias.detach().clone().float() if decoder.bias is not None else None
        self.hooks = []
        if mode in ("fp16-engine-like", "fp16-naive"):
            self.mlm.half()
        if mode == "fp16-engine-like":
            # LayerNorm in FP32 (weights, statistics, output), FP16 around it,
            # as the engine's pinned normalization layers.
            for module in self.mlm.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.float()
                    self.hooks.append(module.register_forward_pre_hook(lambda m, a: tuple(x.float() for x in a)))
                    self.hooks.append(module.register_forward_hook(lambda m, a, out: out.half()))

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        ids_t = torch.from_numpy(ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        autocast = torch.autocast(device_type=self.device.split(":")[0], dtype=torch.float16, enabled=self.mode == "fp16-autocast")
        with torch.inference_mode(), without_decoder(self.mlm, True), autocast:
            hidden = self.mlm(input_ids=ids_t, attention_mask=mask_t).logits
            hidden = torch.where(mask_t.unsqueeze(-1) != 0, hidden, hidden[:, :1])
            if self.mode == "fp32":
                logits = hidden.float() @ self.weight.t()
            elif self.mode == "fp16-naive":
                logits = (hidden.half() @ self.weight.half().t()).float()
            elif self.mode == "fp16-engine-like":
                # FP16 operands, FP32 products and sums, FP32 output.
                logits = hidden.half().float() @ self.weight.half().float().t()
            else:
                logits = (hidden @ self.weight.t()).float()
            pooled = logits.amax(dim=1).float()
            if self.bias is not None:
                pooled = pooled + self.bias
        return pooled.cpu().numpy()


def throughput(encode, vocab_size: int, batch: int, lengths, device: str, repeat: int) -> dict:
    import torch

    rng = np.random.default_rng(0)
    figures = {}
    for length in lengths:
        ids = rng.integers(1000, vocab_size, size=(batch, length), dtype=np.int64)
        mask = np.ones_like(ids)
        encode(ids, mask)  # warm-up: kernels, allocator
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            encode(ids, mask)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        figures[f"{batch}x{length}"] = {"ms_per_batch": round(best * 1e3, 2), "texts_per_s": round(batch / best, 1),
                                        "tokens_per_s": round(batch * length / best)}
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.check_gpu_numerics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "splade-tiny"), help="the exported model's weights")
    parser.add_argument("--pipeline", type=Path, default=DEFAULT_SPEC,
                        help="pipeline spec: its model directory (ONNX graph, tokenizer) and GPU settings")
    parser.add_argument("--onnx", type=Path, default=None, help="default: <the pipeline's model directory>/model.onnx")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=10, help="timed repetitions per throughput shape (best kept)")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--bert-base", action="store_true", help="also time a BERT-base-sized MLM with random weights")
    parser.add_argument("--emulate-on-cpu", action="store_true", help="no GPU: run the modes on the CPU (an emulation)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)

    torch_cuda, ort_cuda, why_not = _cuda_status()
    if not (torch_cuda or ort_cuda) and not args.emulate_on_cpu:
        print(missing_message("check_gpu_numerics", [f"no CUDA GPU visible ({why_not})"]).replace(
            "Run it in the GPU image (docker/) or on a machine with both", "Run it on a machine with an NVIDIA GPU"), file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE)
    device = "cuda" if torch_cuda else "cpu"
    label = "GPU" if device == "cuda" else "CPU EMULATION (not a GPU measurement)"
    # Throughput on the CPU says nothing about the GPU path (bench/ measures the CPU one).
    timed = device == "cuda" and not args.no_throughput

    import onnxruntime as ort
    import torch

    from splade_triton.artifacts import reference

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu_pipeline = GpuPipeline.load(args.pipeline, args.onnx)
    except ValueError as e:
        raise SystemExit(f"check_gpu_numerics: {e}") from None
    shapes, onnx_path = gpu_pipeline.shapes, gpu_pipeline.onnx
    tokenizer = load_tokenizer(gpu_pipeline.tokenizer, shapes.max_length)
    texts = validation_texts(args.texts, list(tokenizer.get_vocab()), seed=0)
    batches = padded_batches(tokenizer, texts, shapes, min(args.batch_size, shapes.encoder_max_batch_size))

    cpu = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = activate(np.concatenate([cpu.run(None, {"input_ids": i, "attention_mask": m})[0] for i, m in batches]))

    report = {"device": label, "texts": len(texts), "k": args.k, "numerics": {}, "throughput": {}}
    if torch_cuda:
        report["gpu"] = torch.cuda.get_device_name(0)
        report["torch"] = torch.__version__
    else:
        report["cpu"] = platform.processor() or platform.machine()
    report["onnxruntime"] = ort.__version__

    if ort_cuda:
        session = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
        got = activate(np.concatenate([session.run(None, {"input_ids": i, "attention_mask": m})[0] for i, m in batches]))
        report["numerics"]["onnxruntime-cuda-fp32"] = compare_weights(expected, got, args.k)

    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"check_gpu_numerics: unknown mode {mode!r}; known: {', '.join(MODES)}")
        _, mlm = reference.load(args.model)
        encode = PooledEncoder(mlm, device, mode)
        got = activate(np.concatenate([encode(i, m) for i, m in batches]))
        report["numerics"][f"torch-{mode}"] = compare_weights(expected, got, args.k)
        if timed and mode in ("fp32", "fp16-engine-like"):
            lengths = [n for n in (32, 128, 512) if n <= shapes.max_length]
            report["throughput"][f"{Path(args.model).name} torch-{mode}"] = throughput(
                encode, mlm.config.vocab_size, shapes.encoder_max_batch_size, lengths, device, args.repeat)
    if args.bert_base and timed:
        from transformers import BertConfig, BertForMaskedLM

        for mode in ("fp32", "fp16-engine-like"):
            torch.manual_seed(0)
            encode = PooledEncoder(BertForMaskedLM(BertConfig()).eval(), device, mode)
            report["throughput"][f"bert-base-random torch-{mode}"] = throughput(
                encode, 30522, shapes.encoder_max_batch_size, [32, 128, 512], device, args.repeat)

    print(f"# {label}: {report.get('gpu', report.get('cpu'))}; {len(texts)} texts vs ONNX Runtime FP32 on CPU")
    print(f"{'mode':32s} {'max abs diff':>12s} {'mean abs diff':>13s} {'top-%d recall' % args.k:>14s} {'worst text':>10s}")
    for name, r in report["numerics"].items():
        print(f"{name:32s} {r['max_abs_diff']:12.3g} {r['mean_abs_diff']:13.3g} {r['topk_recall']:14.4f} {r['min_text_recall']:10.3f}")
    for name, shapes_figures in report["throughput"].items():
        for shape, f in shapes_figures.items():
            print(f"throughput {name} {shape}: {f['ms_per_batch']} ms/batch, {f['texts_per_s']} texts/s")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
