"""RaggedEncoder: requests of different padded lengths regroup without changing results."""

import numpy as np
import onnxruntime as ort
import pytest

from bench.workloads import load_tokenizer
from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.artifacts.texts import VARIED_TEXTS
from tests.conftest import REPOSITORY


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(REPOSITORY / "encoder/1/model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(REPOSITORY / "tokenizer/1/tokenizer.json")


def padded(tokenizer, texts, extra=0):
    enc = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in enc) + extra
    ids = np.zeros((len(texts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask


@pytest.mark.parametrize("budget", [1, 64, 8192])
def test_regrouped_batches_equal_each_text_alone(session, tokenizer, budget):
    alone = np.concatenate([session.run(None, dict(zip(("input_ids", "attention_mask"), padded(tokenizer, [t]))))[0] for t in VARIED_TEXTS])
    requests = [VARIED_TEXTS[i : i + 3] for i in range(0, len(VARIED_TEXTS), 3)]
    batches = [padded(tokenizer, r, extra=k) for k, r in enumerate(requests)]  # padding differs by request
    out = RaggedEncoder(session, budget).encode(batches)
    assert [o.shape[0] for o in out] == [len(r) for r in requests]
    np.testing.assert_allclose(np.concatenate(out), alone, rtol=0, atol=1e-5)


def test_output_buffer_is_reused_and_grows(session, tokenizer):
    encoder = RaggedEncoder(session, 8192)
    first = encoder.encode([padded(tokenizer, ["a", "b"])])[0].copy()
    again = encoder.encode([padded(tokenizer, ["a", "b"])])[0]
    np.testing.assert_array_equal(first, again)
    many = encoder.encode([padded(tokenizer, ["word"] * 9)])[0]
    assert many.shape == (9, encoder.vocab_size)


def test_empty_input(session):
    assert RaggedEncoder(session, 8192).encode([]) == []
