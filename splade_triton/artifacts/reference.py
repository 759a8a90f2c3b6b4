"""The reference SPLADE encoder: transformers + the literal formula (torch).

What the served vectors are checked against: max over tokens of
log1p(relu(logits)) times the attention mask, as text-embeddings-inference's
``--pooling splade`` and sentence-transformers' ``SpladePooling`` compute it.

``load`` refuses a checkpoint that is not a trained masked-LM SPLADE model:
transformers fills weights a checkpoint lacks (an encoder-only checkpoint has
no MLM head) with random ones and only logs a warning, and a validation
against that same model would pass on random vectors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CheckpointError", "encode", "load", "missing_weights", "vocab_sizes"]


class CheckpointError(ValueError):
    """The checkpoint cannot be the reference: weights missing, vocabularies that do not fit."""


def _tied(mlm) -> dict[str, str | None]:
    """Parameters legitimately absent from a checkpoint: tied ones -> their source (None: unknown)."""
    keys = getattr(mlm, "_tied_weights_keys", None) or {}
    if not getattr(mlm.config, "tie_word_embeddings", True):
        return {}
    return dict(keys) if isinstance(keys, dict) else {k: None for k in keys}


def missing_weights(mlm, loading_info: dict) -> list[str]:
    """Parameters transformers initialised randomly because the checkpoint lacks them.

    A tied parameter (the decoder weight, tied to the word embeddings when
    ``tie_word_embeddings`` is true) is not missing as long as what it is tied
    to was loaded; the decoder bias and the head's transform layers must be
    in the checkpoint.
    """
    missing = set(loading_info.get("missing_keys", ()))
    tied = _tied(mlm)
    return sorted(k for k in missing if not (k in tied and tied[k] not in missing))


def vocab_sizes(tokenizer, mlm) -> tuple[int, int]:
    """(MLM output width, tokenizer vocabulary size); refuses a tokenizer larger than the model.

    A model whose vocabulary is padded beyond the tokenizer's (to a multiple
    of 8 or 64, for faster matrix products) is fine: its extra terms are never
    produced by the tokenizer. The reverse would give ids past the embedding.
    """
    model_vocab, tokenizer_vocab = int(mlm.config.vocab_size), len(tokenizer)
    if tokenizer_vocab > model_vocab:
        raise CheckpointError(
            f"the tokenizer has {tokenizer_vocab} tokens but the model's masked-LM output has {model_vocab} "
            f"(config.vocab_size): token ids past {model_vocab - 1} have no embedding; the tokenizer is not this model's"
        )
    return model_vocab, tokenizer_vocab


def load(model: str):
    """(tokenizer, masked-LM model in eval mode, fp32) from a directory or hub id.

    Raises CheckpointError when the checkpoint lacks trained weights (naming
    them) or its tokenizer does not fit the model.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, use_fast=True)
    mlm, info = AutoModelForMaskedLM.from_pretrained(model, dtype="float32", output_loading_info=True)
    missing = missing_weights(mlm, info)
    if missing:
        only_head = not any(k.startswith(mlm.base_model_prefix + ".") for k in missing)
        what = "the trained weights of its masked-LM head" if only_head else "trained weights"
        raise CheckpointError(
            f"{model} is not a masked-LM (SPLADE) checkpoint: it lacks {what}: {', '.join(missing)}. "
            f"transformers would initialise them randomly and the export would produce random vectors; "
            f"export a checkpoint saved with its MLM head (e.g. BertForMaskedLM), not an encoder-only one"
        )
    vocab_sizes(tokenizer, mlm)
    return tokenizer, mlm.eval()


def encode(tokenizer, mlm, texts, max_length: int = 512, batch_size: int = 8) -> np.ndarray:
    """Full SPLADE vectors, float32 [len(texts), vocab]."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            logits = mlm(**batch).logits
            weights = torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)
            out.append(weights.amax(dim=1).float().numpy())
    return np.concatenate(out)
