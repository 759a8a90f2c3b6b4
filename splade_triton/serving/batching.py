"""How the encoder splits the texts of one execution into ONNX Runtime calls."""

from __future__ import annotations

import numpy as np

__all__ = ["ATTENTION_TOKENS_PER_HEAD_DIM", "attention_length", "plan_chunks", "row_cost"]

# Where a runtime materialises the [heads, L, L] attention scores, a text's memory
# is about L x (per-token activations) + L^2 x heads x 4 bytes. The two terms are
# equal at L = 36 x head_dim: measured on XLM-R large in ONNX Runtime 1.32 (147 KB
# per token, 65 B per pair of tokens: one live fp32 score per head; 1.27 / 1.64 /
# 2.69 / 6.33 GiB at 512 / 2048 / 4096 / 8192 tokens, docs/benchmarks.md).
ATTENTION_TOKENS_PER_HEAD_DIM = 36


def attention_length(head_dim: int, fused: bool) -> int:
    """The length at which a text's attention scores weigh as much as its tokens' activations;
    0 where the runtime fuses attention (no score tensor: memory linear in the length)."""
    return 0 if fused else ATTENTION_TOKENS_PER_HEAD_DIM * head_dim


def row_cost(length, attention: int = 0):
    """A padded row's share of the budget, in token-equivalents: its tokens, and where attention
    is materialised (``attention`` > 0: ``attention_length``) its quadratic scores on top."""
    return length * (1 + length / attention) if attention else length

# A jump smaller than this many tokens costs too little padding to be worth another call.
_JUMP_TOKENS = 16


def plan_chunks(lengths, max_batch_tokens: int, max_batch_size: int = 0, attention: int = 0) -> list[np.ndarray]:
    """Group texts of similar length into chunks bounded by a token budget.

    Texts are sorted by length, then cut greedily so that each chunk, padded to
    its longest text, holds at most ``max_batch_tokens`` tokens (and at most
    ``max_batch_size`` texts when that is > 0). Where the runtime materialises
    attention (``attention`` > 0, see ``attention_length``) a row costs
    ``row_cost``: a long text takes more of the budget than its tokens, so
    memory stays bounded by the budget whatever the lengths. This is TEI's max-batch-tokens
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
            padded = np.arange(1, end - start + 1) * row_cost(ordered[start:end].astype(np.float64), attention)
            take = max(int(np.searchsorted(padded, max_batch_tokens, side="right")), 1)
            if max_batch_size:
                take = min(take, max_batch_size)
            chunks.append(order[start : start + take])
            start += take
    return chunks
