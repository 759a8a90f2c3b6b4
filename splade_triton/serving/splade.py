"""SPLADE math, in numpy, importable without Triton or torch.

SPLADE (Formal et al., "SPLADE v2", 2021) weights each vocabulary term by

    w_j = max_i log(1 + relu(logit_ij)) * mask_i

over the tokens i of a text. log1p(relu(.)) is monotone non-decreasing, so the
max can be taken over the raw logits first (padding masked out) and the
activation applied once per term: the exported encoder graph does the max,
this module does the rest.
"""

from __future__ import annotations

import numpy as np

from splade_triton.serving.sparse import SparseBatch, check_options, sparse_rows

__all__ = ["activate", "reference_splade", "sparsify", "SparseBatch"]


def activate(pooled_logits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """log1p(relu(x)): term weights from the max-pooled MLM logits."""
    out = np.maximum(pooled_logits, 0.0, out=out)
    return np.log1p(out, out=out)


def reference_splade(logits: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The literal SPLADE formula on [batch, seq, vocab] logits (for validation).

    Same as text-embeddings-inference's ``--pooling splade`` and
    sentence-transformers' ``SpladePooling(pooling_strategy="max")``.
    """
    weights = np.log1p(np.maximum(logits, 0.0)) * attention_mask[..., None]
    return weights.max(axis=1)


def sparsify(pooled_logits: np.ndarray, top_k: int = 0, min_weight: float = 0.0) -> SparseBatch:
    """Keep the non-zero SPLADE weights of each row of max-pooled logits.

    Args:
        pooled_logits: float32 [n, vocab], the encoder's max over tokens of the
            masked MLM logits (before the activation).
        top_k: keep at most this many terms per text, the largest
            (sentence-transformers' ``max_active_dims``); 0 keeps all.
        min_weight: drop terms whose weight is below this (after log1p(relu)).
    """
    if pooled_logits.ndim != 2:
        raise ValueError(f"pooled_logits must be 2-D [n, vocab], got shape {pooled_logits.shape}")
    check_options(top_k, min_weight)

    n = pooled_logits.shape[0]
    # Only the positive logits have a non-zero weight; working on them alone
    # avoids a full [n, vocab] activation pass.
    rows, cols = np.nonzero(pooled_logits > 0)
    vals = np.log1p(pooled_logits[rows, cols])
    if min_weight > 0:
        keep = vals >= min_weight
        rows, cols, vals = rows[keep], cols[keep], vals[keep]

    return sparse_rows(n, rows, cols, vals, top_k)
