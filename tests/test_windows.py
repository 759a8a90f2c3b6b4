"""Long texts and sides without Triton: serving/windows.py and serving/sides.py."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from splade_triton.serving.sides import Side, read_sides
from splade_triton.serving.splade import activate, sparsify
from splade_triton.serving.windows import TextTooLong, cut, special_count
from tests.conftest import ROOT

TOKENIZER = ROOT / "build" / "models" / "splade-tiny" / "tokenizer.json"
TEXTS = ["", "short one", " ".join(f"w{i}" for i in range(100)), "alpha beta " * 40]


def tokenizer(length: int, stride: int, direction: str):
    t = Tokenizer.from_file(str(TOKENIZER))
    t.no_padding()
    t.enable_truncation(length, stride=stride, direction=direction)
    return t


@pytest.mark.parametrize("stride", [0, 3])
@pytest.mark.parametrize("direction", ["right", "left"])
@pytest.mark.parametrize("special", [True, False])
def test_windows_cover_the_text_and_counts_are_the_whole_texts(stride, direction, special):
    t = tokenizer(16, stride, direction)
    whole = Tokenizer.from_file(str(TOKENIZER))
    whole.no_padding()
    whole.no_truncation()
    n_special = special_count(t, special)
    assert n_special == (2 if special else 0)
    encodings = t.encode_batch(TEXTS, add_special_tokens=special)
    rows = cut(encodings, "chunk", 16, n_special, stride, direction)
    expected = [len(e.ids) for e in whole.encode_batch(TEXTS, add_special_tokens=special)]
    assert rows.num_tokens.tolist() == expected
    assert not rows.truncated.any()
    assert rows.text_index.tolist() == sorted(rows.text_index.tolist())  # texts in order
    content = 16 - n_special
    for i, text in enumerate(TEXTS):
        mine = [r.ids[1:-1] if special else r.ids for r, o in zip(rows.rows, rows.text_index) if o == i]
        assert len(mine) == rows.windows[i] == max(1, 1 + -(-(expected[i] - n_special - content) // (content - stride)))
        assert all(len(r) <= content for r in mine)
        if stride == 0:  # windows in text order, end to end, are the text
            assert [x for r in mine for x in r] == whole.encode(text, add_special_tokens=False).ids
    truncated = cut(encodings, "truncate", 16, n_special, stride, direction)
    assert len(truncated.rows) == len(TEXTS) and truncated.windows.tolist() == [1] * 4
    assert truncated.truncated.tolist() == [n > 16 for n in expected]


def test_error_mode_names_the_text_and_its_count():
    t = tokenizer(16, 0, "right")
    with pytest.raises(TextTooLong, match="text 2 has 232 tokens; the limit is 16"):
        cut(t.encode_batch(TEXTS), "error", 16, 2, 0)
    assert len(cut(t.encode_batch(TEXTS[:2]), "error", 16, 2, 0).rows) == 2


def test_sides_default_and_errors():
    assert read_sides(None) == {"query": Side(), "document": Side()}
    sides = read_sides({"sides": {"query": {"encoder": "static", "weights": "w.npy", "special_tokens": False},
                                  "document": {"encoder": "mlm", "activation": "log1p_log1p_relu"}}})
    assert sides["query"].activation == "identity" and not sides["query"].special_tokens
    assert sides["document"].graph == "model.onnx" and sides["document"].special_tokens
    for bad, message in [
        ({"query": {}}, "exactly the keys query and document"),
        ({"query": {"encoder": "static"}, "document": {}}, "names no weights file"),
        ({"query": {"encoder": "bm25"}, "document": {}}, "encoder must be one of mlm, static"),
        ({"query": {}, "document": {"activation": "gelu"}}, "activation must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            read_sides({"sides": bad})


def test_activations():
    x = np.array([[-1.0, 0.0, 0.5, 3.0]], np.float32)
    np.testing.assert_allclose(activate(x), np.log1p(np.maximum(x, 0)))
    np.testing.assert_allclose(activate(x, activation="log1p_log1p_relu"), np.log1p(np.log1p(np.maximum(x, 0))))
    np.testing.assert_array_equal(activate(x, activation="identity"), x)
    sparse = sparsify(x, activation="log1p_log1p_relu")
    np.testing.assert_allclose(sparse.values[0], np.log1p(np.log1p([3.0, 0.5])), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        sparsify(x, activation="gelu")
