"""The reference SPLADE encoder: transformers + the literal formula (torch).

What the served vectors are checked against: max over tokens of
log1p(relu(logits)) times the attention mask, as text-embeddings-inference's
``--pooling splade`` and sentence-transformers' ``SpladePooling`` compute it.
"""

from __future__ import annotations

import numpy as np


def load(model: str):
    """(tokenizer, masked-LM model in eval mode, fp32) from a directory or hub id."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, use_fast=True)
    mlm = AutoModelForMaskedLM.from_pretrained(model, dtype="float32").eval()
    return tokenizer, mlm


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
