"""Fidelity gate of a lower precision against the fp32 graph: CPU precisions (bf16, int8) and GPU engines.

A precision may be served only where it keeps what fp32 gives:

- SPLADE: on varied texts (``numerics.validation_texts``: the hand-written edge
  cases and texts of 1 to ~600 words), the recall of each text's top-50 terms
  weighted by their fp32 weight (``numerics.compare_weights``' mass recall: the
  share of the top-50 weight kept) >= 0.99 pooled over texts and >= 0.95 on
  the worst text. Counted by terms instead, bf16 failed on terms that carry
  almost nothing: a weight of 0.003-0.05 (under 2.5% of the text's largest)
  rounded to 0 in a short text, or two terms under 1% apart swapped at the
  50th place (bf16 keeps 8 bits of mantissa: 0.4%); the term counts are still
  reported. On a real-text retrieval fixture (``tests/fixtures/beir_tiny``,
  BEIR layout) nDCG@10, computed by ir-measures as ``client evaluate`` does,
  within 0.005 of fp32's.
- BGE-M3: the dense vector's cosine with fp32's >= 0.999 on every text; the
  lexical weights' top-50 recall as above (they are reduced per token id with
  the serving code, ``serving.bge_m3.lexical_weights``); every real token's
  ColBERT vector's cosine with fp32's >= 0.999.

``gate_outputs`` is the gate itself, on the outputs of a reference and a
candidate for the same padded batches: ``export.quantize`` feeds it CPU
sessions run through the serving code (``RaggedEncoder`` over
``serving.runtime.open_session``), so what is gated is what is served;
``export.validate_engine`` feeds it a TensorRT engine's outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splade_triton.artifacts.numerics import compare_weights, validation_texts
from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.serving.splade import activate
from splade_triton.serving.tokens import load_tokenizer, pad_ids

__all__ = ["GATE", "BEIR_FIXTURE", "encode_texts", "gate_outputs", "splade_fidelity", "bge_m3_fidelity", "verdict"]

ROOT = Path(__file__).resolve().parents[2]
BEIR_FIXTURE = ROOT / "tests" / "fixtures" / "beir_tiny"

GATE = {
    "topk_mass_recall_min": 0.99,      # top-50 weight kept, pooled over texts
    "min_text_mass_recall_min": 0.95,  # the worst text's top-50 weight kept
    "ndcg10_max_drop": 0.005,       # |nDCG@10 - fp32's|
    "dense_cosine_min": 0.999,      # BGE-M3: every text's dense vector
    "colbert_cosine_min": 0.999,    # BGE-M3: every real token's ColBERT vector
}


# Per-token outputs and the leading positions their graph drops (the encoder's TOKEN_OUTPUTS).
_TOKEN_OUTPUTS = {"token_weights": 0, "colbert": 1}


def encode_texts(session, tokenizer, texts, outputs=None, batch_size: int = 16, max_batch_tokens: int = 8192):
    """Per output name, the outputs for ``texts`` in order; texts batched ``batch_size``
    per request, each request padded to its own longest text (as the tokenizer model does)."""
    names = [o.name for o in session.get_outputs()]
    encoder = RaggedEncoder(session, max_batch_tokens, {n: d for n, d in _TOKEN_OUTPUTS.items() if n in names})
    encodings = tokenizer.encode_batch(list(texts))
    batches = [pad_ids(encodings[i: i + batch_size]) for i in range(0, len(encodings), batch_size)]
    results = encoder.run(batches, outputs)
    return batches, results


def _splade_vectors(session, tokenizer, texts) -> np.ndarray:
    _, results = encode_texts(session, tokenizer, texts, ["pooled_logits"])
    return activate(np.concatenate([r["pooled_logits"] for r in results]))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def _lexical_rows(batches, results, special, vocab: int) -> np.ndarray:
    from splade_triton.serving.bge_m3 import lexical_weights

    rows = []
    for (ids, _), r in zip(batches, results):
        sparse = lexical_weights(ids, r["token_weights"], special)
        dense = np.zeros((ids.shape[0], vocab), np.float32)
        for i in range(ids.shape[0]):
            keep = sparse.indices[i] >= 0
            dense[i, sparse.indices[i][keep]] = sparse.values[i][keep]
        rows.append(dense)
    return np.concatenate(rows)


def gate_outputs(kind: str, batches, reference, candidate, special=None, vocab: int | None = None) -> dict:
    """The gate's figures and verdict (``verdict``) of ``candidate``'s outputs against ``reference``'s.

    ``batches``: the padded (ids, mask) both ran; ``reference`` / ``candidate``: per batch, output
    name -> array (``encode_texts``' results, or an engine's). SPLADE: ``pooled_logits``; BGE-M3:
    ``dense``, ``token_weights`` (with the export's ``special`` ids and ``vocab`` size) and ``colbert``.
    """
    if kind == "splade":
        def vectors(results):
            return activate(np.concatenate([r["pooled_logits"] for r in results]))

        return verdict(compare_weights(vectors(reference), vectors(candidate), k=50))
    if kind != "bge_m3":
        raise ValueError(f"no fidelity gate for kind {kind!r}")
    figures = compare_weights(_lexical_rows(batches, reference, special, vocab),
                              _lexical_rows(batches, candidate, special, vocab), k=50)
    dense_ref = np.concatenate([r["dense"] for r in reference])
    dense = np.concatenate([r["dense"] for r in candidate])
    cos = _cosines(dense_ref, dense)
    figures.update(dense_cosine_min=float(cos.min()), dense_cosine_mean=float(cos.mean()),
                   dense_max_abs_diff=float(np.abs(dense_ref - dense).max()))
    # ColBERT rows are the tokens after <s>: real where the mask after position 0 is set.
    token_cos = [_cosines(ref["colbert"], got["colbert"])[mask[:, 1:] != 0]
                 for (_, mask), ref, got in zip(batches, reference, candidate)]
    token_cos = np.concatenate(token_cos)
    figures.update(colbert_cosine_min=float(token_cos.min()), colbert_cosine_mean=float(token_cos.mean()))
    return verdict(figures)


def _ndcg10(vectors_for, dataset) -> float:
    from client.evaluate import measure_run

    doc_ids, query_ids = list(dataset.corpus), list(dataset.queries)
    docs = vectors_for([dataset.corpus[d] for d in doc_ids], "document")
    queries = vectors_for([dataset.queries[q] for q in query_ids], "query")
    scores = queries @ docs.T
    run = {q: {d: float(s) for d, s in zip(doc_ids, row)} for q, row in zip(query_ids, scores)}
    return measure_run(dataset.qrels, run, {"nDCG@10": "nDCG@10"})["nDCG@10"]


def splade_fidelity(reference, candidate, model_dir, texts: int = 64, dataset=BEIR_FIXTURE) -> dict:
    """Gate figures of ``candidate`` (a session) against ``reference`` (the fp32 session)."""
    from client.corpus import load_beir

    model_dir = Path(model_dir)
    tokenizer = load_tokenizer(model_dir / "tokenizer.json")
    sample = validation_texts(texts, list(tokenizer.get_vocab()), seed=0)
    batches, ref = encode_texts(reference, tokenizer, sample, ["pooled_logits"])
    _, got = encode_texts(candidate, tokenizer, sample, ["pooled_logits"])
    figures = gate_outputs("splade", batches, ref, got)
    beir = load_beir(dataset)
    figures["ndcg10_fp32"] = _ndcg10(lambda t, _: _splade_vectors(reference, tokenizer, t), beir)
    figures["ndcg10"] = _ndcg10(lambda t, _: _splade_vectors(candidate, tokenizer, t), beir)
    figures["ndcg10_drop"] = figures["ndcg10_fp32"] - figures["ndcg10"]
    return verdict(figures)


def bge_m3_fidelity(reference, candidate, model_dir, texts: int = 64) -> dict:
    from splade_triton.serving.bge_m3 import read_export_info

    model_dir = Path(model_dir)
    info = read_export_info(model_dir / "export_info.json")
    tokenizer = load_tokenizer(model_dir / "tokenizer.json", info.get("max_length", 512))
    words = [w.lstrip("\u2581") for w in tokenizer.get_vocab()]
    sample = validation_texts(texts, words, seed=0)
    outputs = ["dense", "token_weights", "colbert"]
    batches, ref = encode_texts(reference, tokenizer, sample, outputs)
    _, got = encode_texts(candidate, tokenizer, sample, outputs)
    return gate_outputs("bge_m3", batches, ref, got, list(info["special_ids"].values()), int(info["vocab_size"]))


def verdict(figures: dict) -> dict:
    """``figures`` with ``gate``: "pass" or "fail", and ``failures``: what missed."""
    failures = []
    if figures["topk_mass_recall"] < GATE["topk_mass_recall_min"]:
        failures.append(f"top-50 weight recall {figures['topk_mass_recall']:.4f} < {GATE['topk_mass_recall_min']}")
    if figures["min_text_mass_recall"] < GATE["min_text_mass_recall_min"]:
        failures.append(f"worst text's top-50 weight recall {figures['min_text_mass_recall']:.4f} < "
                        f"{GATE['min_text_mass_recall_min']}")
    if "ndcg10_drop" in figures and abs(figures["ndcg10_drop"]) > GATE["ndcg10_max_drop"]:
        failures.append(f"nDCG@10 {figures['ndcg10']:.4f} vs fp32 {figures['ndcg10_fp32']:.4f}: "
                        f"more than {GATE['ndcg10_max_drop']} apart")
    if "dense_cosine_min" in figures and figures["dense_cosine_min"] < GATE["dense_cosine_min"]:
        failures.append(f"dense cosine {figures['dense_cosine_min']:.5f} < {GATE['dense_cosine_min']}")
    if "colbert_cosine_min" in figures and figures["colbert_cosine_min"] < GATE["colbert_cosine_min"]:
        failures.append(f"ColBERT token cosine {figures['colbert_cosine_min']:.5f} < {GATE['colbert_cosine_min']}")
    return {**figures, "gate": "fail" if failures else "pass", "failures": failures}
