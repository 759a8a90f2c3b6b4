"""The fused SPLADE ONNX graph: built from a masked-LM model, checked against the reference.

The graph takes ``input_ids`` and ``attention_mask`` (int64 [batch, seq]) and
returns ``pooled_logits`` (float32 [batch, vocab]): the max over the sequence
of the MLM logits with padding masked out. SPLADE's log1p(relu(.)) is
monotone, so applying it after this max (in the sparsify model) gives exactly
max over tokens of log1p(relu(logits)); the [batch, seq, vocab] logits stay
inside ONNX Runtime.

``export.export_onnx`` is the command line; the benchmark's unfused baseline
(``export(..., pooled=False)``) and ``export.check_gpu_numerics`` (the same
computation in torch, ``without_decoder``) use these functions too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from splade_triton.artifacts import reference
from splade_triton.artifacts.files import staged_directory
from splade_triton.serving.splade import activate

__all__ = ["EXPORTED_FILES", "INPUTS", "OUTPUT", "ExportError", "export", "fused_module",
           "validate", "without_decoder", "write_exported"]

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "pooled_logits"
# The exported model directory: what a pipeline spec's ``model`` names.
EXPORTED_FILES = ("model.onnx", "tokenizer.json", "tokenizer_config.json", "export_info.json")


class ExportError(Exception):
    """The model cannot be exported, or its graph does not match the reference."""


def fused_module(mlm, pooled: bool = True):
    """The graph's module: pooled logits [batch, vocab], or (pooled=False, for
    the benchmark's unfused baseline) the raw logits [batch, seq, vocab].

    Two exact rewrites keep the pooled graph lean, since the [batch, seq, vocab]
    logits dominate its cost:
    - padding is masked on the decoder's *input*: each padded position takes
      the hidden state of the text's first token, a real one, so it repeats a
      logit row that is already there and cannot change the max. The
      [batch, seq, hidden] select replaces a [batch, seq, vocab] one;
    - the decoder bias is the same for every token, so it is added after the
      max, to [batch, vocab], instead of to every token's logits.
    The validation below checks the result against the literal formula.
    """
    import torch

    decoder = mlm.get_output_embeddings()
    if not isinstance(decoder, torch.nn.Linear):
        raise ExportError(f"unsupported MLM head: output embeddings are {type(decoder).__name__}, not Linear")

    class FusedSpladeMaxPool(torch.nn.Module):
        def __init__(self, mlm):
            super().__init__()
            self.mlm = mlm

        def forward(self, input_ids, attention_mask):
            if not pooled:
                return self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits
            # With the decoder made an identity (see without_decoder), the
            # "logits" are the head's hidden states right before it.
            hidden = self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits
            hidden = torch.where(attention_mask.unsqueeze(-1) != 0, hidden, hidden[:, :1])
            pooled_logits = torch.matmul(hidden, decoder.weight.t()).amax(dim=1)
            return pooled_logits + decoder.bias if decoder.bias is not None else pooled_logits

    return FusedSpladeMaxPool(mlm).eval()


class without_decoder:
    """Make the MLM head's decoder an identity while the graph is traced."""

    def __init__(self, mlm, active: bool):
        self.decoder = mlm.get_output_embeddings()
        self.active = active

    def __enter__(self):
        if self.active:
            self.decoder.forward = lambda x: x

    def __exit__(self, *exc):
        if self.active:
            del self.decoder.forward


def export(mlm, path: Path, opset: int, pooled: bool = True) -> None:
    """Trace ``fused_module(mlm, pooled)`` to an ONNX file with dynamic batch and sequence axes."""
    import torch

    module = fused_module(mlm, pooled)
    example = (torch.ones(2, 16, dtype=torch.int64), torch.ones(2, 16, dtype=torch.int64))
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
    with torch.inference_mode(), without_decoder(mlm, pooled):
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=list(INPUTS),
            output_names=[OUTPUT if pooled else "logits"],
            opset_version=opset,
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            optimize=True,
        )
    program.save(str(path), external_data=False)


def validate(onnx_path: Path, tokenizer, mlm, texts, max_length: int, tolerance: float) -> dict:
    """Compare the graph, run in padded batches, with the reference on each text."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if names != list(INPUTS) or [o.name for o in session.get_outputs()] != [OUTPUT]:
        raise ExportError(f"unexpected graph signature: inputs {names}, outputs {[o.name for o in session.get_outputs()]}")

    expected = reference.encode(tokenizer, mlm, texts, max_length=max_length)
    got = []
    # Batches of mixed lengths, so the padding mask is exercised too.
    for i in range(0, len(texts), 7):
        enc = tokenizer(list(texts[i : i + 7]), padding=True, truncation=True, max_length=max_length, return_tensors="np")
        feeds = {name: enc[name].astype(np.int64) for name in INPUTS}
        got.append(activate(session.run(None, feeds)[0]))
    got = np.concatenate(got)

    diff = float(np.abs(got - expected).max())
    support_mismatch = int(((got > 0) != (expected > 0)).sum())
    report = {"texts": len(texts), "max_abs_diff": diff, "nonzero_mismatches": support_mismatch}
    print(f"validation on {len(texts)} texts: max abs diff {diff:.3g} (tolerance {tolerance:g}), "
          f"non-zero set mismatches {support_mismatch}")
    if diff > tolerance or support_mismatch:
        raise ExportError(f"ONNX export does not match the reference: max abs diff {diff:.3g} > {tolerance:g} "
                          f"or {support_mismatch} non-zero mismatches")
    return report


def write_exported(output: Path, onnx_path: Path, tokenizer_dir: Path, info: dict) -> Path:
    """Write the exported model directory all at once (a reader never sees half of it).

    ``model.onnx.data`` beside ``onnx_path`` (external initializers) is written too.
    """
    output = Path(output).resolve()
    with staged_directory(output) as staging:
        shutil.copyfile(onnx_path, staging / "model.onnx")
        # A graph saved with external data (over protobuf's 2 GB) names this file from model.onnx.
        data = onnx_path.with_name(onnx_path.name + ".data")
        if data.exists():
            shutil.copyfile(data, staging / "model.onnx.data")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(Path(tokenizer_dir) / name, staging / name)
        (staging / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return output
