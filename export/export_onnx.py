#!/usr/bin/env python3
"""Export a Hugging Face masked-LM SPLADE model to ONNX with the pooling fused in.

The graph takes ``input_ids`` and ``attention_mask`` (int64 [batch, seq]) and
returns ``pooled_logits`` (float32 [batch, vocab]): the max over the sequence
of the MLM logits with padding masked out. SPLADE's log1p(relu(.)) is
monotone, so applying it after this max (in the sparsify model) gives exactly
max over tokens of log1p(relu(logits)); the [batch, seq, vocab] logits stay
inside ONNX Runtime.

The exported graph is checked against the reference (transformers, literal
SPLADE formula) on varied texts; the script fails when the max abs difference
exceeds the tolerance or the sets of non-zero terms differ. Then the exported
model directory is written (all at once: nothing half-written is left):
model.onnx, the tokenizer files and export_info.json. A pipeline spec
(pipelines/*.toml) names that directory; the repository assembly copies the
files into the model folders.

    python export/export_onnx.py --model models/splade-tiny --output build/models/splade-tiny
    python export/export_onnx.py --model naver/splade-v3   # where the hub is reachable
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from splade_triton.artifacts import reference
from splade_triton.serving.splade import activate
from splade_triton.artifacts.texts import VARIED_TEXTS

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "pooled_logits"


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
        raise SystemExit(f"unsupported MLM head: output embeddings are {type(decoder).__name__}, not Linear")

    class FusedSpladeMaxPool(torch.nn.Module):
        def __init__(self, mlm):
            super().__init__()
            self.mlm = mlm

        def forward(self, input_ids, attention_mask):
            if not pooled:
                return self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits
            # With the decoder made an identity (see _without_decoder), the
            # "logits" are the head's hidden states right before it.
            hidden = self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits
            hidden = torch.where(attention_mask.unsqueeze(-1) != 0, hidden, hidden[:, :1])
            pooled_logits = torch.matmul(hidden, decoder.weight.t()).amax(dim=1)
            return pooled_logits + decoder.bias if decoder.bias is not None else pooled_logits

    return FusedSpladeMaxPool(mlm).eval()


class _without_decoder:
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
    import torch

    module = fused_module(mlm, pooled)
    example = (torch.ones(2, 16, dtype=torch.int64), torch.ones(2, 16, dtype=torch.int64))
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
    with torch.inference_mode(), _without_decoder(mlm, pooled):
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
        raise SystemExit(f"unexpected graph signature: inputs {names}, outputs {[o.name for o in session.get_outputs()]}")

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
        raise SystemExit(f"ONNX export does not match the reference: max abs diff {diff:.3g} > {tolerance:g} "
                         f"or {support_mismatch} non-zero mismatches")
    return report


def write_exported(output: Path, onnx_path: Path, tokenizer_dir: Path, info: dict) -> None:
    """Write the exported model directory: built beside ``output``, then renamed into place."""
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        shutil.copyfile(onnx_path, staging / "model.onnx")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(tokenizer_dir / name, staging / name)
        (staging / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
        if output.exists():
            old = output.with_name(f".{output.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            output.rename(old)
            staging.rename(output)
            shutil.rmtree(old)
        else:
            staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote model.onnx, tokenizer files and export_info.json to {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/splade-tiny", help="local directory or Hugging Face hub id")
    parser.add_argument("--output", type=Path, default=None,
                        help="exported model directory (default: build/models/<model directory name>)")
    parser.add_argument("--max-length", type=int, default=512, help="truncation length used in validation")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed in validation")
    args = parser.parse_args()

    started = time.time()
    tokenizer, mlm = reference.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_path = tmp / "model.onnx"
        export(mlm, onnx_path, args.opset)
        print(f"exported {args.model} to ONNX ({onnx_path.stat().st_size / 2**20:.1f} MiB) in {time.time() - started:.1f} s")
        report = validate(onnx_path, tokenizer, mlm, VARIED_TEXTS, args.max_length, args.tolerance)
        tokenizer.save_pretrained(tmp / "tokenizer")
        info = {
            "source_model": args.model,
            "opset": args.opset,
            "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            "vocab_size": int(mlm.config.vocab_size),
            "validation": report,
        }
        output = args.output or Path("build/models") / Path(args.model).name
        write_exported(output, onnx_path, tmp / "tokenizer", info)


if __name__ == "__main__":
    main()
