"""Fine-tune a SPLADE masked-LM directory with sentence-transformers' SparseEncoderTrainer.

The model is ``Transformer(fill-mask) + SpladePooling(max)``: the same vectors
the served pipeline computes (max over tokens of log1p(relu(MLM logits)))).
The loss is sentence-transformers' ``SpladeLoss``: a contrastive loss
(``SparseMultipleNegativesRankingLoss``: in-batch and hard negatives; or
``SparseDistillKLDivLoss`` when the data carries teacher scores) plus the
FLOPS regularisers of documents and queries (or L1), their weights raised from
0 to their maximum along a quadratic warm-up
(``SpladeRegularizerWeightSchedulerCallback``). Gradients are clipped
(``max_grad_norm``). Checkpoints go to ``<OUT>.checkpoints/``; running the same
command again after an interruption resumes from the latest one. The output is
written all at once (staged, then renamed): a masked-LM directory (config.json,
model.safetensors, tokenizer files) that the export takes as is, plus the
sentence-transformers files (modules.json, ...) that load it as a SparseEncoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["L1Regularizer", "TrainConfig", "build_encoder", "train"]

_CHECKPOINTS = ".checkpoints"


@dataclass
class TrainConfig:
    model: str
    data: str
    output: str
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    max_seq_length: int = 256
    document_regularizer_weight: float = 3e-3
    query_regularizer_weight: float = 1e-3
    regularizer: str = "flops"  # or "l1"
    regularizer_warmup_ratio: float = 1 / 3
    max_grad_norm: float = 1.0
    negatives: int = 1
    save_steps: int = 20
    max_steps: int = -1
    seed: int = 12
    device: str | None = None  # None: CUDA when present, else CPU
    progress: bool = True


class L1Regularizer(nn.Module):
    """The L1 norm of each vector, averaged over the batch (SpladeLoss's regulariser interface)."""

    def __init__(self, model=None):
        super().__init__()

    def compute_loss_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.abs().sum(dim=1).mean()


def pick_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def build_encoder(model_dir: str | Path, max_seq_length: int = 256, device: str | None = None):
    """A SparseEncoder over a masked-LM directory: Transformer(fill-mask) + SpladePooling(max)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    transformer = Transformer(str(model_dir), transformer_task="fill-mask", max_seq_length=max_seq_length)
    return SparseEncoder(modules=[transformer, SpladePooling(pooling_strategy="max")], device=pick_device(device))


def _fingerprint(config: TrainConfig, columns: dict) -> str:
    """What a resumed run must share with the one it resumes: the training rows (data, mined
    negatives) and the training settings."""
    h = hashlib.sha256(json.dumps(columns, sort_keys=True).encode())
    settings = {k: v for k, v in asdict(config).items() if k not in ("output", "progress", "device", "save_steps")}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


class _Progress:
    """A tqdm bar over the optimiser steps showing loss and the current regulariser weights."""

    def __new__(cls, loss, enabled: bool):
        from tqdm.auto import tqdm
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            bar = None
            history: list[dict] = []

            def on_train_begin(self, args, state, control, **kwargs):
                if enabled:
                    self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                                    dynamic_ncols=True, file=sys.stderr)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if not logs or "loss" not in logs:
                    return
                record = {"step": state.global_step, "loss": float(logs["loss"]),
                          **{k: float(logs[k]) for k in ("base_loss", "document_regularizer_loss",
                                                         "query_regularizer_loss") if k in logs},
                          "document_regularizer_weight": float(loss.document_regularizer_weight or 0.0),
                          "query_regularizer_weight": float(loss.query_regularizer_weight or 0.0)}
                self.history.append(record)
                if self.bar is not None:
                    self.bar.n = state.global_step
                    self.bar.set_postfix(loss=f"{record['loss']:.4f}",
                                         reg_d=f"{record['document_regularizer_weight']:.2e}",
                                         reg_q=f"{record['query_regularizer_weight']:.2e}")
                    self.bar.refresh()

            def on_train_end(self, args, state, control, **kwargs):
                if self.bar is not None:
                    self.bar.n = state.global_step
                    self.bar.close()

        return Callback()


def train(config: TrainConfig, examples=None) -> dict:
    """Train, save ``config.output`` at once, and return a summary (steps, loss history, seconds).

    ``examples``: already read (and mined) examples; default: read ``config.data``.
    """
    from datasets import Dataset
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
    from sentence_transformers.sparse_encoder.callbacks.splade_callbacks import SpladeRegularizerWeightSchedulerCallback
    from sentence_transformers.sparse_encoder.losses import (
        SparseDistillKLDivLoss, SparseMultipleNegativesRankingLoss, SpladeLoss)
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    from splade_triton.artifacts.files import staged_directory

    from .data import read_examples, to_rows

    started = time.time()
    if config.regularizer not in ("flops", "l1"):
        raise ValueError(f"regularizer must be flops or l1, got {config.regularizer!r}")
    examples = read_examples(config.data) if examples is None else examples
    columns, negatives, distill = to_rows(examples, config.negatives, config.seed)
    dataset = Dataset.from_dict(columns)

    output = Path(config.output).resolve()
    checkpoints = output.parent / (output.name + _CHECKPOINTS)
    fingerprint = _fingerprint(config, columns)
    stamp = checkpoints / "run.json"
    resume = False
    if checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*")):
        previous = json.loads(stamp.read_text()).get("fingerprint") if stamp.is_file() else None
        if previous != fingerprint:
            raise ValueError(f"{checkpoints} holds checkpoints of another run (other data or settings); "
                             "remove it to start over")
        resume = True
    checkpoints.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "config": asdict(config)}, indent=1))

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = pick_device(config.device)
    model = build_encoder(config.model, config.max_seq_length, device)
    regulariser = L1Regularizer if config.regularizer == "l1" else None
    base = SparseDistillKLDivLoss(model) if distill else SparseMultipleNegativesRankingLoss(model)
    loss = SpladeLoss(model, base,
                      document_regularizer_weight=config.document_regularizer_weight,
                      query_regularizer_weight=config.query_regularizer_weight,
                      document_regularizer=regulariser(model) if regulariser else None,
                      query_regularizer=regulariser(model) if regulariser else None)
    schedule = SpladeRegularizerWeightSchedulerCallback(loss, "quadratic", config.regularizer_warmup_ratio)
    progress = _Progress(loss, config.progress)
    args = SparseEncoderTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float below 1: a share of the steps (transformers 5)
        max_grad_norm=config.max_grad_norm,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # in-batch negatives must not be the query's own positive
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
    )
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                   callbacks=[schedule, progress])
    trainer.remove_callback(PrinterCallback)  # our bar shows the loss; no dict per step on stdout
    result = trainer.train(resume_from_checkpoint=True if resume else None)

    with staged_directory(output) as staging:
        model.save(str(staging))
        (staging / "README.md").unlink(missing_ok=True)  # the model card: generated, not ours to keep
        summary = {
            "source_model": str(config.model),
            "data": str(config.data),
            "examples": len(examples),
            "rows": len(dataset),
            "negatives_per_row": negatives,
            "loss": "SpladeLoss(" + type(base).__name__ + ")",
            "regularizer": config.regularizer,
            "steps": int(result.global_step),
            "resumed": resume,
            "device": device,
            "seconds": round(time.time() - started, 1),
            "config": asdict(config),
            "history": progress.history,
        }
        (staging / "training_info.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(checkpoints, ignore_errors=True)  # done: an interrupted run is the one that keeps them
    return summary


def regularizer_weight(step: int, max_steps: int, maximum: float, warmup_ratio: float = 1 / 3) -> float:
    """The quadratic warm-up SpladeRegularizerWeightSchedulerCallback applies (for checks and docs)."""
    warmup = max(1, int(max_steps * warmup_ratio))
    return maximum if step >= warmup else maximum * (step / warmup) ** 2


def steps_for(rows: int, batch_size: int, epochs: float) -> int:
    return math.ceil(math.ceil(rows / batch_size) * epochs)
