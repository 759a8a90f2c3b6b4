"""serving/tokens.py and serving/terms.py on their own: no Triton."""

import json

import numpy as np
import pytest

from splade_triton.serving.terms import TermTable, beyond_tokenizer_term
from splade_triton.serving.tokens import load_tokenizer, pad_ids, pad_segments, round_length
from tests.conftest import default_pipeline

TOKENIZER = default_pipeline().model / "tokenizer.json"


def loop_pad(rows, length):
    """The per-row loop that pad_ids replaces, as the reference."""
    ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def test_pad_ids_equals_the_row_loop():
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 30000, size=n).tolist() for n in rng.integers(1, 40, size=25)]
    for length in (None, 40, 64):
        ids, mask = pad_ids(rows, length)
        want = loop_pad(rows, length or max(map(len, rows)))
        assert ids.dtype == mask.dtype == np.int64
        np.testing.assert_array_equal(ids, want[0])
        np.testing.assert_array_equal(mask, want[1])


def test_pad_ids_takes_encodings_and_refuses_a_short_length():
    tokenizer = load_tokenizer(TOKENIZER, max_length=8)
    encodings = tokenizer.encode_batch(["a", "what is the capital of france and its history"])
    ids, mask = pad_ids(encodings)
    assert ids.shape == (2, 8)  # truncated at max_length, special tokens included
    assert ids[0, :3].tolist() == encodings[0].ids and mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="cannot pad rows of up to 8 tokens to 4"):
        pad_ids(encodings, 4)


def test_pad_edge_cases():
    ids, mask = pad_ids([])
    assert ids.shape == (0, 0)
    ids, mask = pad_ids([[], [5]], 3)
    assert ids.tolist() == [[0, 0, 0], [5, 0, 0]] and mask.tolist() == [[0, 0, 0], [1, 0, 0]]
    ids, mask = pad_segments(np.arange(10), np.array([7, 0]), np.array([3, 2]), dtype=np.int32)
    assert ids.dtype == np.int32 and ids.tolist() == [[7, 8, 9], [0, 1, 0]]


def test_round_length():
    assert [round_length(n, 32) for n in (1, 32, 33)] == [32, 32, 64]
    assert round_length(500, 32, limit=512) == 512 and round_length(510, 64, limit=500) == 500


def test_load_tokenizer_has_no_padding_even_if_the_file_pads(tmp_path):
    spec = json.loads(TOKENIZER.read_text())
    spec["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                       "pad_type_id": 0, "pad_token": "[PAD]"}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    encodings = load_tokenizer(path, 512).encode_batch(["a", "a b c d e"])
    assert [len(e.ids) for e in encodings] == [3, 7]
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="cannot load tokenizer file"):
        load_tokenizer(tmp_path / "bad.json")


def test_term_table_maps_ids_past_the_tokenizer():
    """An MLM head padded past the tokenizer (30528 vs 30522) must not raise IndexError."""
    table = TermTable({"[PAD]": 0, "a": 1, "b": 2})
    got = table.lookup(np.array([[2, 0, -1], [5, 3, -1]], dtype=np.int32))
    assert got.tolist() == [[b"b", b"[PAD]", b""], [b"[unused5]", b"[unused3]", b""]]
    assert table.lookup(np.array([[1, -1]])).tolist() == [[b"a", b""]]  # -1 is still padding after growing
    assert table.lookup(np.zeros((2, 0), dtype=np.int32)).shape == (2, 0)


def test_term_table_on_the_real_vocabulary():
    vocab = load_tokenizer(TOKENIZER).get_vocab(with_added_tokens=True)
    table = TermTable(vocab)
    inverse = {i: t.encode() for t, i in vocab.items()}
    ids = np.array([[101, 3007, 30521, 30522, 30527, -1]])
    assert table.lookup(ids).tolist() == [[inverse[101], inverse[3007], inverse[30521], b"[unused30522]",
                                           b"[unused30527]", b""]]
    # Every name of an id past the tokenizer is new: one string per index.
    assert beyond_tokenizer_term(30522).decode() not in vocab
