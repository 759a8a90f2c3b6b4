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
