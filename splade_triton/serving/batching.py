"""How the encoder splits the texts of one execution into ONNX Runtime calls."""

from __future__ import annotations

import numpy as np

__all__ = ["plan_chunks"]


def plan_chunks(lengths, max_batch_tokens: int, max_batch_size: int = 0) -> list[np.ndarray]:
    """Group texts of similar length into chunks bounded by a token budget.

    Texts are sorted by length, then cut greedily so that each chunk, padded to
    its longest text, holds at most ``max_batch_tokens`` tokens (and at most
    ``max_batch_size`` texts when that is > 0). This is TEI's max-batch-tokens
    idea: forty short queries and one 512-token passage become a chunk of
    forty short rows and a chunk of one long row, not a 41 x 512 batch. A text
    longer than the budget still runs, alone.

    Returns the positions (into ``lengths``) of each chunk, shortest first.
    """
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    chunks: list[np.ndarray] = []
    start, n = 0, order.size
    while start < n:
        # Sorted ascending, so a chunk of k texts from ``start`` pads to
        # ordered[start + k - 1]: its size k * that length grows with k, and
        # the largest k within the budget is one binary search (a loop per
        # chunk, not per text).
        padded = np.arange(1, n - start + 1) * ordered[start:]
        take = max(int(np.searchsorted(padded, max_batch_tokens, side="right")), 1)
        if max_batch_size:
            take = min(take, max_batch_size)
        chunks.append(order[start : start + take])
        start += take
    return chunks
