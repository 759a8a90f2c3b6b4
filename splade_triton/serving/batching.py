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
    chunks: list[np.ndarray] = []
    start = 0
    for end in range(1, order.size + 1):
        if end == order.size:
            chunks.append(order[start:end])
            break
        # Sorted ascending, so the next text is the longest if it joins.
        size = end - start + 1
        too_many = max_batch_size and size > max_batch_size
        if too_many or size * lengths[order[end]] > max_batch_tokens:
            chunks.append(order[start:end])
            start = end
    return chunks
