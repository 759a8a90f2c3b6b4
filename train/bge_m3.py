"""Fine-tune a BGE-M3 directory (FlagEmbedding's published layout) with FlagEmbedding's own
unified fine-tuning: dense + sparse + ColBERT losses and their weighting, optional
self-distillation, or the heads alone with the encoder frozen.

This only prepares FlagEmbedding's arguments and data and runs its
``EncoderOnlyEmbedderM3Runner`` (nothing of its training is re-written here).
The checked examples (with mined negatives, if asked) are written to the
checkpoint folder as FlagEmbedding's JSONL; checkpoints go to
``<OUT>.checkpoints/`` and the same command resumes from the latest; the output
is FlagEmbedding's saved model (XLM-RoBERTa weights, ``sparse_linear.pt``,
``colbert_linear.pt``, tokenizer files), written at once to OUT: the layout
``python -m export.export_onnx --model OUT`` exports as BGE-M3.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = ["M3Config", "train_m3"]

KEEP = ("config.json", "model.safetensors", "pytorch_model.bin", "sparse_linear.pt", "colbert_linear.pt",
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model")


@dataclass
class M3Config:
    model: str
    data: str
    output: str
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    learning_rate: float = 1e-5
    warmup_ratio: float = 0.1
    query_max_length: int = 64
    passage_max_length: int = 256
    negatives: int = 1  # train_group_size - 1
    temperature: float = 0.02
    self_distill: bool = True
    freeze_encoder: bool = False  # train the sparse and ColBERT heads only
    max_grad_norm: float = 1.0
    save_steps: int = 20
    seed: int = 12
    device: str | None = None
    progress: bool = True


def _fingerprint(config: M3Config, data: bytes) -> str:
    h = hashlib.sha256(data)
    settings = {k: v for k, v in asdict(config).items() if k not in ("output", "progress", "device", "save_steps")}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def train_m3(config: M3Config, examples) -> dict:
    from FlagEmbedding.finetune.embedder.encoder_only.m3 import (
        EncoderOnlyEmbedderM3DataArguments, EncoderOnlyEmbedderM3ModelArguments, EncoderOnlyEmbedderM3Runner,
        EncoderOnlyEmbedderM3TrainingArguments)
    from transformers import HfArgumentParser
    from transformers.trainer_utils import get_last_checkpoint

    from splade_triton.artifacts.files import staged_directory

    started = time.time()
    # FlagEmbedding draws a query's negatives again when it has fewer than the group needs;
    # one with none takes other queries' (seeded), never its own positives.
    n = min(config.negatives, max(len(e.neg) for e in examples))
    distill = all(e.pos_scores is not None and e.neg_scores is not None for e in examples) and n > 0 \
        and all(e.neg for e in examples)
    rng = random.Random(config.seed)
    pool = [t for e in examples for t in e.neg]
    lines = []
    for e in examples:
        neg = e.neg or ([rng.choice([t for t in pool if t not in e.pos] or pool)] if n else [])
        row = {"query": e.query, "pos": e.pos, "neg": neg}
        if distill:
            row |= {"pos_scores": e.pos_scores, "neg_scores": e.neg_scores}
        lines.append(json.dumps(row, ensure_ascii=False))
    data = ("\n".join(lines) + "\n").encode()

    output = Path(config.output).resolve()
    checkpoints = output.parent / (output.name + ".checkpoints")
    fingerprint = _fingerprint(config, data)
    stamp = checkpoints / "run.json"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last:
        previous = json.loads(stamp.read_text()).get("fingerprint") if stamp.is_file() else None
        if previous != fingerprint:
            raise ValueError(f"{checkpoints} holds checkpoints of another run (other data or settings); "
                             "remove it to start over")
    checkpoints.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "config": asdict(config)}, indent=1))
    (checkpoints / "train.jsonl").write_bytes(data)

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_args, data_args, training_args = HfArgumentParser((
        EncoderOnlyEmbedderM3ModelArguments, EncoderOnlyEmbedderM3DataArguments,
        EncoderOnlyEmbedderM3TrainingArguments)).parse_dict({
            "model_name_or_path": str(config.model),
            "train_data": [str(checkpoints / "train.jsonl")],
            "cache_path": str(checkpoints / "cache"),
            "train_group_size": n + 1,
            "query_max_len": config.query_max_length,
            "passage_max_len": config.passage_max_length,
            "knowledge_distillation": distill,
            "output_dir": str(checkpoints),
            "num_train_epochs": config.epochs,
            "max_steps": config.max_steps,
            "per_device_train_batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "warmup_steps": config.warmup_ratio,
            "max_grad_norm": config.max_grad_norm,
            "temperature": config.temperature,
            "sentence_pooling_method": "cls",
            "normalize_embeddings": True,
            "unified_finetuning": True,
            "use_self_distill": config.self_distill,
            "fix_encoder": config.freeze_encoder,
            "save_steps": config.save_steps,
            "save_total_limit": 2,
            "logging_steps": 1,
            "seed": config.seed,
            "report_to": "none",
            "use_cpu": device == "cpu",
            "disable_tqdm": not config.progress,
            "resume_from_checkpoint": last,
        })
    runner = EncoderOnlyEmbedderM3Runner(model_args=model_args, data_args=data_args, training_args=training_args)
    runner.run()
    history = [h for h in runner.trainer.state.log_history if "loss" in h]
    with staged_directory(output) as staging:
        for name in KEEP:
            if (checkpoints / name).is_file():
                shutil.copy2(checkpoints / name, staging / name)
        summary = {"source_model": str(config.model), "data": str(config.data), "examples": len(examples),
                   "negatives_per_query": n, "distillation": distill,
                   "losses": "FlagEmbedding unified fine-tuning (dense + sparse + colbert"
                             + (", self-distillation" if config.self_distill else "") + ")",
                   "freeze_encoder": config.freeze_encoder, "steps": int(runner.trainer.state.global_step),
                   "resumed": bool(last), "device": device, "seconds": round(time.time() - started, 1),
                   "config": asdict(config), "history": history}
        (staging / "training_info.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(checkpoints, ignore_errors=True)
    return summary
