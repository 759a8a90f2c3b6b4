"""Export a Hugging Face masked-LM SPLADE model to ONNX with the pooling fused in.

The graph (splade_triton/artifacts/onnx_graph.py) takes ``input_ids`` and
``attention_mask`` and returns ``pooled_logits``, the max over tokens of the
MLM logits; sparsify applies log1p(relu(.)) after it.

The checkpoint must carry its trained masked-LM head: one without (an
encoder-only checkpoint, for which transformers would make a random head) is
refused, naming the missing weights, as is a tokenizer larger than the
model's vocabulary. The exported graph is checked against the reference
(transformers, literal SPLADE formula) on varied texts; the export fails when
the max abs difference exceeds the tolerance or the sets of non-zero terms
differ. Then the exported model directory is written all at once (nothing
half-written is left, a failed export leaves the previous one): model.onnx,
the tokenizer files and export_info.json. A pipeline spec (pipelines/*.toml)
names that directory; the repository assembly copies the files into the
model folders.

    python -m export.export_onnx --model models/splade-tiny --output build/models/splade-tiny
    python -m export.export_onnx --model naver/splade-v3   # where the hub is reachable
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from splade_triton.artifacts import reference
from splade_triton.artifacts.onnx_graph import ExportError, export, validate, write_exported
from splade_triton.artifacts.texts import VARIED_TEXTS

__all__ = ["export", "main"]  # export: bench/run.py's unfused baseline imports it from here


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.export_onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/splade-tiny", help="local directory or Hugging Face hub id")
    parser.add_argument("--output", type=Path, default=None,
                        help="exported model directory (default: build/models/<model directory name>)")
    parser.add_argument("--max-length", type=int, default=512, help="truncation length used in validation")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed in validation")
    args = parser.parse_args(argv)

    started = time.time()
    try:
        tokenizer, mlm = reference.load(args.model)
        model_vocab, tokenizer_vocab = reference.vocab_sizes(tokenizer, mlm)
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
                # The MLM output width (the embedding's length) and the tokenizer's
                # vocabulary: a model may pad its vocabulary beyond the tokenizer's.
                "vocab_size": model_vocab,
                "tokenizer_vocab_size": tokenizer_vocab,
                "validation": report,
            }
            output = write_exported(args.output or Path("build/models") / Path(args.model).name, onnx_path, tmp / "tokenizer", info)
    except (ExportError, reference.CheckpointError) as e:
        raise SystemExit(f"export_onnx: {e}") from None
    print(f"wrote model.onnx, tokenizer files and export_info.json to {output}"
          + (f" (the model's vocabulary, {model_vocab}, is padded beyond the tokenizer's {tokenizer_vocab})"
             if model_vocab != tokenizer_vocab else ""))


if __name__ == "__main__":
    main()
