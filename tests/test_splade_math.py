"""The SPLADE math module on its own: no Triton, no torch."""

import numpy as np
import pytest

from splade_triton.serving.splade import activate, reference_splade, sparsify


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_max_then_activation_equals_the_reference_formula(rng):
    logits = rng.normal(size=(5, 9, 40)).astype(np.float32) * 3
    mask = np.ones((5, 9), dtype=np.float32)
    mask[1, 4:] = 0
    mask[3, 1:] = 0
    masked = np.where(mask[..., None] > 0, logits, np.finfo(np.float32).min)
    np.testing.assert_allclose(activate(masked.max(axis=1)), reference_splade(logits, mask), rtol=0, atol=1e-6)


def test_activation_is_log1p_relu():
    x = np.array([[-3.0, 0.0, 1.0, np.e - 1]], dtype=np.float32)
    np.testing.assert_allclose(activate(x), [[0.0, 0.0, np.log(2.0), 1.0]], rtol=1e-6)


def test_sparsify_keeps_non_zeros_sorted_descending(rng):
    pooled = rng.normal(size=(4, 100)).astype(np.float32)
    sparse = sparsify(pooled)
    weights = activate(pooled.copy())
    for row, (idx, val) in enumerate(sparse.rows()):
        assert set(idx.tolist()) == set(np.flatnonzero(weights[row] > 0).tolist())
        np.testing.assert_allclose(val, weights[row, idx], rtol=1e-6)
        assert np.all(np.diff(val) <= 0)


def test_rows_pad_to_the_longest_with_minus_one_and_zero():
    pooled = np.full((3, 6), -1.0, dtype=np.float32)
    pooled[0, [1, 4]] = [2.0, 5.0]
    pooled[2, [0, 2, 3, 5]] = [1.0, 1.0, 3.0, 0.5]
    sparse = sparsify(pooled)
    assert sparse.indices.dtype == np.int32 and sparse.values.dtype == np.float32
    assert sparse.indices.shape == (3, 4)
    assert sparse.indices[0].tolist() == [4, 1, -1, -1]
    assert sparse.values[0, 2:].tolist() == [0.0, 0.0]
    assert sparse.indices[1].tolist() == [-1, -1, -1, -1]  # no positive logit: empty vector
    assert sparse.indices[2].tolist() == [3, 0, 2, 5]  # the tie 0/2 keeps index order
    assert sparse.counts.tolist() == [2, 0, 4]


def test_top_k_keeps_the_largest(rng):
    pooled = rng.normal(size=(3, 200)).astype(np.float32)
    full, top = sparsify(pooled), sparsify(pooled, top_k=5)
    assert top.indices.shape == (3, 5)
    np.testing.assert_array_equal(top.indices, full.indices[:, :5])


def test_min_weight_drops_smaller_weights(rng):
    pooled = rng.normal(size=(3, 200)).astype(np.float32)
    sparse = sparsify(pooled, min_weight=0.5)
    for idx, val in sparse.rows():
        assert val.size and val.min() >= 0.5
    assert sum(sparse.counts) == int((activate(pooled.copy()) >= 0.5).sum())


def test_no_rows_and_all_negative():
    assert sparsify(np.zeros((0, 10), np.float32)).indices.shape == (0, 0)
    assert sparsify(np.full((2, 10), -5.0, np.float32)).indices.shape == (2, 0)


@pytest.mark.parametrize("kwargs", [{"top_k": -1}, {"min_weight": -0.1}, {"min_weight": float("nan")}, {"min_weight": float("inf")}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ValueError):
        sparsify(np.zeros((1, 4), np.float32), **kwargs)


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        sparsify(np.zeros(4, np.float32))


def test_max_over_windows_takes_each_texts_max_across_its_rows():
    from splade_triton.serving.splade import max_over_windows

    rows = np.array([[1.0, 5.0], [3.0, 2.0], [0.5, 0.5], [7.0, -1.0], [2.0, 9.0]], np.float32)
    # text 0: rows 0-1, text 1: row 2, text 2: rows 3-4
    out = max_over_windows(rows, np.array([0, 0, 1, 2, 2]))
    np.testing.assert_array_equal(out, [[3.0, 5.0], [0.5, 0.5], [7.0, 9.0]])
    assert max_over_windows(rows, np.arange(5)) is rows  # one row per text: as it is
    assert max_over_windows(rows, None) is rows


def test_static_vectors_look_up_each_real_tokens_weight_once():
    from splade_triton.serving.splade import static_vectors

    weights = np.array([0.0, 0.5, 1.5, 2.5], np.float32)
    ids = np.array([[1, 2, 2, 0], [3, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    out = static_vectors(weights, ids, mask)
    np.testing.assert_array_equal(out, [[0.0, 0.5, 1.5, 0.0], [0.0, 0.0, 0.0, 2.5]])  # padding id 0 not counted
