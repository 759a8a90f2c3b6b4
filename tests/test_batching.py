import numpy as np
import pytest

from splade_triton.serving.batching import CALL_TOKENS, plan_chunks


def test_short_texts_are_not_padded_to_a_long_one():
    lengths = [12] * 40 + [512]
    chunks = plan_chunks(lengths, max_batch_tokens=8192)
    long_chunk = next(c for c in chunks if 40 in c.tolist())
    assert long_chunk.tolist() == [40]
    for chunk in chunks:
        assert chunk.size * max(lengths[i] for i in chunk) <= 8192


def test_short_texts_beside_a_long_documents_windows_run_on_their_own():
    # Four queries and the windows of a chunked document: the budget alone fits
    # the queries into the first chunk of windows, padded to 512.
    lengths = [12] * 4 + [512] * 98 + [20]
    chunks = plan_chunks(lengths, max_batch_tokens=8192)
    short = {0, 1, 2, 3, 102}
    assert any(set(c.tolist()) == short for c in chunks)
    assert all(set(c.tolist()) <= short or not set(c.tolist()) & short for c in chunks)
    # Lengths a few tokens apart are not worth another call: one chunk.
    assert len(plan_chunks([100, 101, 103, 104] * 10, max_batch_tokens=8192)) == 1


def _cost(lengths, chunks):
    return sum(len(c) * max(lengths[i] for i in c) + CALL_TOKENS for c in chunks)


@pytest.mark.parametrize("seed", range(5))
def test_the_plan_is_the_cheapest_cut_of_the_sorted_lengths(seed):
    # Every way to cut 9 sorted lengths into consecutive chunks (2^8), against the plan.
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 400, size=9).tolist()
    budget = 1200
    ordered = sorted(range(9), key=lambda i: lengths[i])
    best = float("inf")
    for mask in range(2**8):
        cuts = [0] + [k + 1 for k in range(8) if mask >> k & 1] + [9]
        chunks = [ordered[a:b] for a, b in zip(cuts, cuts[1:])]
        if all(len(c) == 1 or len(c) * max(lengths[i] for i in c) <= budget for c in chunks):
            best = min(best, _cost(lengths, chunks))
    assert _cost(lengths, [c.tolist() for c in plan_chunks(lengths, budget)]) == best


def test_padding_is_cut_where_it_costs_more_than_a_call():
    # 10..59 tokens: one call padded to 59 wastes 1225 tokens; a few calls waste far fewer.
    lengths = list(range(10, 60))
    chunks = plan_chunks(lengths, max_batch_tokens=8192)
    assert 1 < len(chunks) < len(lengths)
    assert _cost(lengths, chunks) < len(lengths) * 59 + CALL_TOKENS


@pytest.mark.parametrize("budget,max_size", [(1, 0), (64, 0), (1000, 0), (1000, 7), (10**6, 3)])
def test_every_text_exactly_once_within_budget(budget, max_size):
    lengths = np.random.default_rng(1).integers(2, 300, size=97)
    chunks = plan_chunks(lengths, budget, max_size)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(97))
    for chunk in chunks:
        padded = chunk.size * lengths[chunk].max()
        assert chunk.size == 1 or padded <= budget
        assert not max_size or chunk.size <= max_size


def test_chunks_group_similar_lengths():
    lengths = [5, 300, 6, 290, 7]
    chunks = plan_chunks(lengths, max_batch_tokens=900)
    assert [sorted(c.tolist()) for c in chunks] == [[0, 2, 4], [1, 3]]


def test_empty_and_bad_budget():
    assert plan_chunks([], 10) == []
    with pytest.raises(ValueError):
        plan_chunks([3], 0)
