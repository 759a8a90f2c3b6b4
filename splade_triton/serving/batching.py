"""How the encoder splits the texts of one execution into ONNX Runtime calls."""

from __future__ import annotations

import numpy as np

__all__ = ["ATTENTION_TOKENS_PER_HEAD_DIM", "CALL_TOKENS", "attention_length", "plan_chunks", "row_cost"]

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

# A call costs about as much as this many more tokens of padding: a chunk is cut
# where the padding it saves is worth more. Measured on splade-tiny, 2 cores
# (Intel Xeon with AMX): replayed in process, executions of 22 passages of
# 102-132 tokens ran 2-10% faster (run to run) cut at 32, 64 or 128 than as one
# padded call, and 20% slower cut into one text per call; served, the encoder's
# CPU per passage fell 11% (docs/overhead.md).
CALL_TOKENS = 64


def plan_chunks(lengths, max_batch_tokens: int, max_batch_size: int = 0, attention: int = 0) -> list[np.ndarray]:
    """Group texts of similar length into runtime calls bounded by a token budget.

    Texts are sorted by length and cut into consecutive chunks, each padded to
    its longest text, so that padded tokens plus ``CALL_TOKENS`` per call are
    fewest (an exact dynamic programme over the cut points), under two
    bounds: a chunk holds at most ``max_batch_tokens`` tokens (and at most
    ``max_batch_size`` texts when that is > 0). Where the runtime materialises
    attention (``attention`` > 0, see ``attention_length``) a row costs
    ``row_cost`` of the budget: a long text takes more of it than its tokens,
    so memory stays bounded by the budget whatever the lengths. This is TEI's
    max-batch-tokens idea, plus the padding: forty short queries and one
    512-token passage become a chunk of forty short rows and a chunk of one
    long row, not a 41 x 512 batch, and four queries beside a long document's
    512-token windows run on their own even where the budget would fit them
    in. A text longer than the budget still runs, alone.

    Returns the positions (into ``lengths``) of each chunk, shortest first.
    """
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    n = ordered.size
    # Most rows a chunk ending at each row may hold: the budget at that row's padded cost.
    most = np.maximum(max_batch_tokens // row_cost(ordered.astype(np.float64), attention), 1).astype(np.int64)
    if max_batch_size:
        most = np.minimum(most, max_batch_size)
    # cost[j]: the cheapest plan of the j shortest rows; cut[j]: where its last chunk starts.
    cost = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        first = max(j - int(most[j - 1]), 0)
        starts = np.arange(first, j)
        total = cost[first:j] + (j - starts) * ordered[j - 1] + CALL_TOKENS
        best = int(np.argmin(total))  # ties: the earliest start, the fewest calls
        cost[j], cut[j] = total[best], first + best
    chunks: list[np.ndarray] = []
    end = n
    while end:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]
