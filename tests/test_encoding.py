"""RaggedEncoder: requests of different padded lengths regroup without changing results."""

import numpy as np
import onnxruntime as ort
import pytest

from splade_triton.artifacts.texts import VARIED_TEXTS
from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.serving.tokens import load_tokenizer, pad_ids
from tests.conftest import default_pipeline

MODEL = default_pipeline().model


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(MODEL / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL / "tokenizer.json")


def padded(tokenizer, texts, extra=0):
    enc = tokenizer.encode_batch(texts)
    return pad_ids(enc, max(len(e.ids) for e in enc) + extra)


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


def test_mask_positions_not_ids_decide_what_is_kept(session, tokenizer):
    """Padding ids other than 0 and int32 inputs come out the same."""
    ids, mask = padded(tokenizer, ["a", "what is the capital of france"], extra=3)
    noisy = np.where(mask > 0, ids, 999)
    encoder = RaggedEncoder(session, 8192)
    want = encoder.encode([(ids, mask)])[0].copy()
    got = encoder.encode([(noisy.astype(np.int32), mask.astype(np.int32))])[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
