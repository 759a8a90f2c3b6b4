"""One fidelity gate (splade_triton.artifacts.fidelity.gate_outputs) for CPU precisions and GPU
engines, on outputs: ONNX Runtime fp32 stands in for both the reference and the candidate here
(no TensorRT on these machines); a candidate off in one output fails naming it."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from splade_triton.artifacts.fidelity import encode_texts, gate_outputs
from splade_triton.artifacts.numerics import validation_texts
from splade_triton.serving.tokens import load_tokenizer
from tests.conftest import BGE_M3_TINY, ROOT

SPLADE_TINY = ROOT / "build" / "models" / "splade-tiny"


def _outputs(model, names, texts=24):
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(model / "tokenizer.json", 512)
    words = [w.lstrip("\u2581") for w in tokenizer.get_vocab()]
    return encode_texts(session, tokenizer, validation_texts(texts, words, seed=0), names)


@pytest.fixture(scope="module")
def bge_m3():
    if not (BGE_M3_TINY / "model.onnx").is_file():
        pytest.fail("the BGE-M3 fixture is not exported: run script/setup")
    info = json.loads((BGE_M3_TINY / "export_info.json").read_text())
    batches, results = _outputs(BGE_M3_TINY, ["dense", "token_weights", "colbert"])
    return batches, results, list(info["special_ids"].values()), int(info["vocab_size"])


def _changed(results, name, fn):
    return [{**r, name: fn(r[name].copy())} for r in results]


def test_bge_m3_outputs_are_gated_on_dense_lexical_and_colbert(bge_m3):
    batches, reference, special, vocab = bge_m3
    same = gate_outputs("bge_m3", batches, reference, reference, special, vocab)
    assert same["gate"] == "pass" and same["colbert_cosine_min"] > 0.9999 and same["dense_cosine_min"] > 0.9999

    def one_token_off(colbert):
        colbert[0, 0] = -colbert[0, 0]  # one real token of one text, reversed
        return colbert

    cases = {"colbert": (one_token_off, "ColBERT token cosine"),
             "dense": (lambda d: np.roll(d, 1, axis=1), "dense cosine"),
             "token_weights": (lambda w: w[::-1].copy(), "top-50 weight recall")}
    for name, (change, failure) in cases.items():
        figures = gate_outputs("bge_m3", batches, reference, _changed(reference, name, change), special, vocab)
        assert figures["gate"] == "fail", name
        assert any(failure in f for f in figures["failures"]), (name, figures["failures"])


def test_splade_outputs_are_gated_on_the_worst_text_not_only_the_pooled_recall():
    batches, reference = _outputs(SPLADE_TINY, ["pooled_logits"], texts=64)

    def one_text_off(pooled):
        if pooled.shape[0]:
            pooled[0] = np.roll(pooled[0], 7)  # the first text of each batch: other terms
        return pooled

    candidate = _changed(reference, "pooled_logits", one_text_off)
    figures = gate_outputs("splade", batches, reference, candidate)
    assert figures["gate"] == "fail"
    assert any("worst text" in f for f in figures["failures"]), figures["failures"]
    assert gate_outputs("splade", batches, reference, reference)["gate"] == "pass"
    with pytest.raises(ValueError, match="no fidelity gate for kind 'other'"):
        gate_outputs("other", batches, reference, reference)
