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

A directory in BGE-M3's published layout (``sparse_linear.pt`` /
``colbert_linear.pt`` beside the XLM-R weights) is exported as BGE-M3 instead
(splade_triton/artifacts/bge_m3.py): one graph with the outputs ``dense``,
``token_weights`` and ``colbert``, validated against FlagEmbedding's own
BGEM3FlagModel on the same directory (tolerance 1e-5). A model over 1.5 GB
(BGE-M3 is 2.27 GB, past protobuf's 2 GB limit) is saved with its weights in
``model.onnx.data`` beside ``model.onnx``.

    python -m export.export_onnx --model build/models/bge-m3-tiny-src --output build/models/bge-m3-tiny

A directory saved by sentence-transformers' SparseEncoder (``modules.json``),
or OpenSearch's layout (``idf.json`` beside a masked-LM checkpoint), is
exported with its query and document sides (splade_triton/artifacts/asymmetric.py):
``model.onnx`` (the document encoder), ``query.onnx`` (a query/document pair's
query encoder) or ``query_weights.npy`` (an inference-free query side: a weight
per token id), and export_info.json ``layout`` and ``sides`` (each side's
encoder, activation, special tokens and truncation length, read from the
model's files; ``--max-length`` does not apply). Each side is validated
against sentence-transformers' own ``encode_query`` / ``encode_document`` on
the same directory (tolerance 1e-4, same non-zero terms).

    python -m export.export_onnx --model build/models/splade-router-tiny-src --output build/models/splade-router-tiny
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from splade_triton.artifacts import asymmetric, bge_m3, reference
from splade_triton.artifacts.files import file_sha256
from splade_triton.artifacts.onnx_graph import ExportError, export, validate, write_exported
from splade_triton.artifacts.repository import assemble, default_pipelines
from splade_triton.artifacts.texts import VARIED_TEXTS

# SPLADE and the asymmetric layouts (at most 512 tokens): the opset every GPU engine build parses.
OPSET = 18

__all__ = ["export", "main"]  # export: bench/run.py's unfused baseline imports it from here


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.export_onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/splade-tiny", help="local directory or Hugging Face hub id")
    parser.add_argument("--output", type=Path, default=None,
                        help="exported model directory (default: build/models/<model directory name>)")
    parser.add_argument("--max-length", type=int, default=512,
                        help="truncation length used in validation (BGE-M3: at most its positions - 2)")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset (default: {OPSET} SPLADE, {bge_m3.OPSET} BGE-M3: its attention as one "
                             "ONNX Attention op, which OpenVINO runs in memory linear in the length)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max abs difference allowed in validation (default: 1e-4 SPLADE, 1e-5 BGE-M3)")
    parser.add_argument("--external-data", choices=("auto", "always", "never"), default="auto",
                        help="BGE-M3: weights in model.onnx.data beside model.onnx (auto: when the model is over "
                             f"{bge_m3.EXTERNAL_DATA_ABOVE / 2**30:g} GiB)")
    parser.add_argument("--repository", type=Path, default=None,
                        help="then assemble this model repository from pipelines/*.toml (e.g. model_repository): "
                             "the pipelines whose spec names the output serve the new export")
    args = parser.parse_args(argv)

    if bge_m3.is_layout(args.model):
        args.opset = args.opset or bge_m3.OPSET
        output = export_bge_m3(args)
    elif asymmetric.is_layout(args.model):
        args.opset = args.opset or OPSET
        output = export_sides(args)
    else:
        args.opset = args.opset or OPSET
        output = export_splade(args)
    if args.repository is not None:
        install(output, args.repository)


def install(output: Path, repository: Path) -> None:
    """Assemble ``repository`` from every pipeline spec; say which ones serve ``output``."""
    pipelines = default_pipelines()
    serving = [p.name for p in pipelines if p.model is not None and p.model.resolve() == Path(output).resolve()]
    if not serving:
        raise SystemExit(f"export_onnx: no spec in pipelines/ names {output} as its model: add one "
                         f"(see pipelines/*.toml: kind and model) and run this again, or assemble by hand")
    try:
        assemble(repository, pipelines)
    except (ValueError, OSError) as e:  # OSError: a missing file, an output that is not a directory
        raise SystemExit(f"export_onnx: assembling {repository}: {e}") from None
    print(f"assembled {repository}: pipeline(s) {', '.join(serving)} serve {output} "
          f"(restart a server running on it: script/serve)")


def max_positions(config) -> int:
    """Tokens a text may have: the position embeddings, less RoBERTa's offset (its positions
    start after the padding index)."""
    offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta", "camembert") else 0
    return int(config.max_position_embeddings) - offset


def export_splade(args) -> Path:
    args.tolerance = 1e-4 if args.tolerance is None else args.tolerance
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
                "kind": "splade",
                "source_model": args.model,
                "opset": args.opset,
                "onnx_sha256": file_sha256(onnx_path),
                # The MLM output width (the embedding's length) and the tokenizer's
                # vocabulary: a model may pad its vocabulary beyond the tokenizer's.
                "vocab_size": model_vocab,
                "tokenizer_vocab_size": tokenizer_vocab,
                # What the position embeddings allow: the bound of every served length and of
                # the encoder's per-request check (older exports without it are probed at load).
                "max_length": max_positions(mlm.config),
                "validation": report,
            }
            output = write_exported(args.output or Path("build/models") / Path(args.model).name, onnx_path, tmp / "tokenizer", info)
    except (ExportError, reference.CheckpointError) as e:
        raise SystemExit(f"export_onnx: {e}") from None
    print(f"wrote model.onnx, tokenizer files and export_info.json to {output}"
          + (f" (the model's vocabulary, {model_vocab}, is padded beyond the tokenizer's {tokenizer_vocab})"
             if model_vocab != tokenizer_vocab else ""))
    return output


def export_sides(args) -> Path:
    """Export, validate and write a sentence-transformers or OpenSearch directory (see asymmetric)."""
    started = time.time()
    try:
        print(f"exporting {args.model} ({asymmetric.detect(args.model)} layout)")
        output = asymmetric.export(args.model, args.output or Path("build/models") / Path(args.model).name,
                                   args.opset, 1e-4 if args.tolerance is None else args.tolerance)
    except (ExportError, reference.CheckpointError) as e:
        raise SystemExit(f"export_onnx: {e}") from None
    print(f"wrote {', '.join(sorted(p.name for p in output.iterdir()))} to {output} in {time.time() - started:.1f} s")
    return output


def export_bge_m3(args) -> Path:
    """Export, validate and write a BGE-M3 directory (see bge_m3 for the graph)."""
    started = time.time()
    try:
        tokenizer, encoder, sparse_linear, colbert_linear = bge_m3.load(args.model)
        config = encoder.config
        positions = int(config.max_position_embeddings)
        # XLM-R's positions start after the padding index: two fewer tokens than position embeddings.
        max_length = positions - 2
        size = bge_m3.parameter_bytes(encoder, sparse_linear, colbert_linear)
        external = {"always": True, "never": False}.get(args.external_data, size > bge_m3.EXTERNAL_DATA_ABOVE)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            onnx_path = tmp / "model.onnx"
            bge_m3.export(encoder, sparse_linear, colbert_linear, onnx_path, args.opset, external)
            data_path = tmp / "model.onnx.data"
            on_disk = onnx_path.stat().st_size + (data_path.stat().st_size if data_path.exists() else 0)
            print(f"exported {args.model} (BGE-M3, {size / 2**20:.1f} MiB of weights) to ONNX "
                  f"({on_disk / 2**20:.1f} MiB{', external data' if external else ''}) in {time.time() - started:.1f} s")
            del encoder, sparse_linear, colbert_linear  # FlagEmbedding loads its own copy
            from FlagEmbedding import BGEM3FlagModel

            flag = BGEM3FlagModel(str(args.model), use_fp16=False, devices="cpu")
            tolerance = 1e-5 if args.tolerance is None else args.tolerance
            # Both runtimes the encoder serves; then one document of the model's full length on
            # OpenVINO, the runtime whose attention stays linear in memory at that length.
            report = {runtime: bge_m3.validate(onnx_path, Path(args.model), tokenizer, bge_m3.VALIDATION_TEXTS,
                                               min(args.max_length, max_length), tolerance, runtime=runtime,
                                               reference=flag)
                      for runtime in ("onnxruntime", "openvino")}
            report = {**report.pop("onnxruntime"), **report,
                      "long_document": bge_m3.validate_long(onnx_path, Path(args.model), tokenizer, max_length,
                                                            tolerance, reference=flag)}
            del flag
            tokenizer.save_pretrained(tmp / "tokenizer")
            info = {
                "kind": "bge_m3",
                "source_model": args.model,
                "opset": args.opset,
                "outputs": list(bge_m3.OUTPUTS),
                "hidden_size": int(config.hidden_size),
                # With hidden_size: the head width that sizes the encoder's attention memory.
                "num_attention_heads": int(config.num_attention_heads),
                "max_position_embeddings": positions,
                "max_length": max_length,
                "special_ids": bge_m3.special_ids(tokenizer),
                "vocab_size": int(config.vocab_size),
                "tokenizer_vocab_size": len(tokenizer),
                "external_data": external,
                "onnx_sha256": file_sha256(onnx_path),
                **({"onnx_data_sha256": file_sha256(data_path)} if external else {}),
                "validation": report,
            }
            output = write_exported(args.output or Path("build/models") / Path(args.model).name, onnx_path,
                                    tmp / "tokenizer", info)
    except (ExportError, reference.CheckpointError) as e:
        raise SystemExit(f"export_onnx: {e}") from None
    print(f"wrote model.onnx{' + model.onnx.data' if external else ''}, tokenizer files and export_info.json "
          f"to {output} in {time.time() - started:.1f} s")
    return output


if __name__ == "__main__":
    main()
