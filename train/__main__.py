"""python -m train --model DIR --data TRAIN.jsonl --output OUT [options]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data import DataError, read_examples
from .bge_m3 import M3Config
from .splade import TrainConfig

DEFAULTS = TrainConfig("", "", "")
M3 = M3Config("", "", "")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Fine-tune a SPLADE masked-LM directory on JSONL {query, pos, neg} lines "
                    "(sentence-transformers' SparseEncoderTrainer + SpladeLoss). See docs/finetuning.md.")
    p.add_argument("--model", required=True, help="SPLADE masked-LM directory (e.g. models/splade-tiny)")
    p.add_argument("--data", required=True, help='JSONL: {"query": str, "pos": [str], "neg": [str]} '
                                                 "(neg, pos_scores, neg_scores optional)")
    p.add_argument("--output", required=True, help="the trained model directory (same layout as --model)")
    p.add_argument("--epochs", type=float, default=DEFAULTS.epochs)
    p.add_argument("--max-steps", type=int, default=DEFAULTS.max_steps, help="stop after this many steps (-1: epochs)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default {DEFAULTS.batch_size} (SPLADE), {M3.batch_size} (BGE-M3)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help=f"default {DEFAULTS.learning_rate:g} (SPLADE), {M3.learning_rate:g} (BGE-M3)")
    p.add_argument("--warmup-ratio", type=float, default=DEFAULTS.warmup_ratio, help="learning-rate warm-up")
    p.add_argument("--max-seq-length", type=int, default=DEFAULTS.max_seq_length)
    p.add_argument("--document-regularizer-weight", type=float, default=DEFAULTS.document_regularizer_weight)
    p.add_argument("--query-regularizer-weight", type=float, default=DEFAULTS.query_regularizer_weight)
    p.add_argument("--regularizer", choices=("flops", "l1"), default=DEFAULTS.regularizer)
    p.add_argument("--regularizer-warmup-ratio", type=float, default=DEFAULTS.regularizer_warmup_ratio,
                   help="share of the steps over which the regulariser weights rise quadratically to their maximum")
    p.add_argument("--max-grad-norm", type=float, default=DEFAULTS.max_grad_norm, help="gradient clipping")
    p.add_argument("--negatives", type=int, default=DEFAULTS.negatives, help="hard negatives per row")
    p.add_argument("--mine-negatives", type=int, default=0, metavar="N",
                   help="add N BM25 (bm25s) hard negatives per query, mined from --corpus and the data's texts")
    p.add_argument("--corpus", default=None, help="JSONL documents for mining ({text} or BEIR's {title, text})")
    p.add_argument("--save-steps", type=int, default=DEFAULTS.save_steps, help="checkpoint every N steps")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    p.add_argument("--no-progress", action="store_true")
    m3 = p.add_argument_group("BGE-M3 (FlagEmbedding's unified fine-tuning)")
    m3.add_argument("--freeze-encoder", action="store_true", help="train the sparse and ColBERT heads only")
    m3.add_argument("--no-self-distill", action="store_true", help="no self-distillation from the combined score")
    m3.add_argument("--query-max-length", type=int, default=M3.query_max_length)
    m3.add_argument("--passage-max-length", type=int, default=M3.passage_max_length)
    p.add_argument("--install", metavar="PIPELINE", default=None,
                   help="then export the output into pipelines/PIPELINE.toml's model directory and assemble "
                        "the repository (python -m train.install; --server reloads it)")
    p.add_argument("--repository", default="model_repository", help="with --install")
    p.add_argument("--server", default=None, help="with --install: HOST:HTTP_PORT to reload the pipeline on")
    return p


def read_corpus(path: str) -> list[str]:
    from client.corpus import read_jsonl, record_text

    return [record_text(obj, ("title", "text"), f"{path}:{n}: ") for n, obj in read_jsonl(path)]


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from splade_triton.artifacts import bge_m3

    is_m3 = bge_m3.is_layout(args.model)
    if not Path(args.model).is_dir():
        raise SystemExit(f"python -m train: {args.model} is not a directory")
    try:
        examples = read_examples(args.data)
        if args.mine_negatives:
            from .bm25 import mine_negatives

            corpus = read_corpus(args.corpus) if args.corpus else []
            examples = mine_negatives(examples, corpus, args.mine_negatives)
            args.negatives = max(args.negatives, args.mine_negatives)
    except (DataError, ValueError) as e:
        raise SystemExit(f"python -m train: {e}") from None
    if is_m3:
        from .bge_m3 import train_m3

        m3 = M3Config(model=args.model, data=args.data, output=args.output, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size or M3.batch_size,
                      learning_rate=args.learning_rate or M3.learning_rate, warmup_ratio=args.warmup_ratio,
                      query_max_length=args.query_max_length, passage_max_length=args.passage_max_length,
                      negatives=args.negatives, self_distill=not args.no_self_distill,
                      freeze_encoder=args.freeze_encoder, max_grad_norm=args.max_grad_norm,
                      save_steps=args.save_steps, seed=args.seed, device=args.device,
                      progress=not args.no_progress)
        try:
            summary = train_m3(m3, examples)
        except ValueError as e:
            raise SystemExit(f"python -m train: {e}") from None
        print(json.dumps({k: summary[k] for k in ("examples", "negatives_per_query", "steps", "resumed", "device",
                                                  "seconds")}))
        print(f"wrote {args.output} (export: python -m export.export_onnx --model {args.output})", file=sys.stderr)
        if args.install:
            raise SystemExit("python -m train: --install serves SPLADE models; export a BGE-M3 with "
                             "python -m export.export_onnx --model OUT --output build/models/bge-m3 --repository "
                             "model_repository")
        return
    config = TrainConfig(
        model=args.model, data=args.data, output=args.output, epochs=args.epochs,
        batch_size=args.batch_size or DEFAULTS.batch_size,
        learning_rate=args.learning_rate or DEFAULTS.learning_rate, warmup_ratio=args.warmup_ratio, max_seq_length=args.max_seq_length,
        document_regularizer_weight=args.document_regularizer_weight,
        query_regularizer_weight=args.query_regularizer_weight, regularizer=args.regularizer,
        regularizer_warmup_ratio=args.regularizer_warmup_ratio, max_grad_norm=args.max_grad_norm,
        negatives=args.negatives, save_steps=args.save_steps, max_steps=args.max_steps, seed=args.seed,
        device=args.device, progress=not args.no_progress)
    from .splade import train

    try:
        summary = train(config, examples)
    except ValueError as e:
        raise SystemExit(f"python -m train: {e}") from None
    last = summary["history"][-1] if summary["history"] else {}
    print(json.dumps({k: summary[k] for k in ("examples", "rows", "negatives_per_row", "steps", "resumed",
                                              "device", "seconds")} | {"last": last}))
    print(f"wrote {args.output} (export: python -m export.export_onnx --model {args.output})", file=sys.stderr)
    if args.install:
        from .install import install

        install(Path(args.output), args.install, Path(args.repository), args.server)


if __name__ == "__main__":
    main()
