"""Sparse rows, the output form of every sparse step: sorted, cut, padded.

SPLADE's sparsify (one weight per vocabulary id) and BGE-M3's lexical step
(the max token weight per token id) both end here: given the kept
(text, id, weight) triples, each text's terms sorted by weight descending
(ties by id ascending), at most ``top_k`` of them, as ``indices`` int32
[n, K] padded with -1 and ``values`` float32 [n, K] padded with 0, K the
longest row. Numpy only, importable without Triton.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SparseBatch", "check_options", "sparse_rows"]


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


def check_options(top_k: int, min_weight: float) -> None:
    """ValueError unless ``top_k`` >= 0 and ``min_weight`` is finite and >= 0."""
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps all terms), got {top_k}")
    if not math.isfinite(min_weight) or min_weight < 0:
        raise ValueError(f"min_weight must be a finite number >= 0, got {min_weight}")


def sparse_rows(n: int, rows: np.ndarray, ids: np.ndarray, weights: np.ndarray, top_k: int = 0) -> SparseBatch:
    """``n`` texts' sparse rows from (text, id, weight) triples, at most one per (text, id).

    Each row sorted by weight descending, ties by id ascending; at most
    ``top_k`` terms per text (0 keeps all).
    """
    order = np.lexsort((ids, -weights, rows))
    rows, ids, weights = rows[order], ids[order], weights[order]
    counts = np.bincount(rows, minlength=n)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    rank = np.arange(rows.size) - np.repeat(starts, counts)
    if top_k:
        keep = rank < top_k
        rows, ids, weights, rank = rows[keep], ids[keep], weights[keep], rank[keep]
        counts = np.minimum(counts, top_k)
    width = int(counts.max()) if n else 0
    indices = np.full((n, width), -1, dtype=np.int32)
    values = np.zeros((n, width), dtype=np.float32)
    indices[rows, rank] = ids
    values[rows, rank] = weights
    return SparseBatch(indices, values, counts)
