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


class SparseBatch:
    """Per-text sparse vectors of a batch, padded to the longest row.

    ``indices`` int32 [n, K] (padding -1) and ``values`` float32 [n, K]
    (padding 0), each row sorted by value descending, ties by index ascending.
    """

    __slots__ = ("indices", "values", "counts")

    def __init__(self, indices: np.ndarray, values: np.ndarray, counts: np.ndarray):
        self.indices = indices
        self.values = values
        self.counts = counts

    def rows(self):
        """Yield (indices, values) of each text without the padding."""
        for i, n in enumerate(self.counts):
            yield self.indices[i, :n], self.values[i, :n]


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
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps all terms), got {top_k}")
    if not np.isfinite(min_weight) or min_weight < 0:
        raise ValueError(f"min_weight must be a finite number >= 0, got {min_weight}")

    n = pooled_logits.shape[0]
    # Only the positive logits have a non-zero weight; working on them alone
    # avoids a full [n, vocab] activation pass.
    rows, cols = np.nonzero(pooled_logits > 0)
    vals = np.log1p(pooled_logits[rows, cols])
    if min_weight > 0:
        keep = vals >= min_weight
        rows, cols, vals = rows[keep], cols[keep], vals[keep]

    # Row-major, value descending; lexsort is stable, so ties keep index order.
    order = np.lexsort((-vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=n)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    rank = np.arange(rows.size) - np.repeat(starts, counts)
    if top_k:
        keep = rank < top_k
        rows, cols, vals, rank = rows[keep], cols[keep], vals[keep], rank[keep]
        counts = np.minimum(counts, top_k)

    width = int(counts.max()) if n else 0
    indices = np.full((n, width), -1, dtype=np.int32)
    values = np.zeros((n, width), dtype=np.float32)
    indices[rows, rank] = cols
    values[rows, rank] = vals
    return SparseBatch(indices, values, counts)
