"""How the encoder splits the texts of one execution into ONNX Runtime calls."""

from __future__ import annotations

import numpy as np

__all__ = ["plan_chunks"]

# A jump smaller than this many tokens costs too little padding to be worth another call.
_JUMP_TOKENS = 16


def plan_chunks(lengths, max_batch_tokens: int, max_batch_size: int = 0) -> list[np.ndarray]:
    """Group texts of similar length into chunks bounded by a token budget.

    Texts are sorted by length, then cut greedily so that each chunk, padded to
    its longest text, holds at most ``max_batch_tokens`` tokens (and at most
    ``max_batch_size`` texts when that is > 0). This is TEI's max-batch-tokens
    idea: forty short queries and one 512-token passage become a chunk of
    forty short rows and a chunk of one long row, not a 41 x 512 batch. A text
    longer than the budget still runs, alone.

    Nor does a chunk cross a jump in length (a row more than twice as long as
    the one before it, and 16 tokens longer): four queries that fit the budget
    beside a long document's 512-token windows still run on their own, not
    padded to 512 (the budget alone would have packed them together).

    Returns the positions (into ``lengths``) of each chunk, shortest first.
    """
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    chunks: list[np.ndarray] = []
    # Segments between jumps in length; chunks are cut within each.
    jumps = np.flatnonzero(ordered[1:] > 2 * ordered[:-1] + _JUMP_TOKENS) + 1
    for first, end in zip([0, *jumps.tolist()], [*jumps.tolist(), order.size]):
        start = first
        while start < end:
            # Sorted ascending, so a chunk of k texts from ``start`` pads to
            # ordered[start + k - 1]: its size k * that length grows with k, and
            # the largest k within the budget is one binary search (a loop per
            # chunk, not per text).
            padded = np.arange(1, end - start + 1) * ordered[start:end]
            take = max(int(np.searchsorted(padded, max_batch_tokens, side="right")), 1)
            if max_batch_size:
                take = min(take, max_batch_size)
            chunks.append(order[start : start + take])
            start += take
    return chunks
