import numpy as np
import pytest

from splade_triton.serving.batching import plan_chunks


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
    # Gradual lengths are not split by it: one chunk within the budget.
    assert len(plan_chunks(list(range(10, 60)), max_batch_tokens=8192)) == 1


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
