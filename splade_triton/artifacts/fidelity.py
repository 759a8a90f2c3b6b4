"""Fidelity gate of a lower precision (bf16, int8) against the fp32 graph, on CPU runtimes.

A precision may be served only where it keeps what fp32 gives:

- SPLADE: on varied texts (``numerics.validation_texts``: the hand-written edge
  cases and texts of 1 to ~600 words), the recall of each text's top-50 terms
  (``numerics.compare_weights``) >= 0.99 pooled over texts and >= 0.95 on the
  worst text; on a real-text retrieval fixture (``tests/fixtures/beir_tiny``,
  BEIR layout) nDCG@10, computed by ir-measures as ``client evaluate`` does,
  within 0.005 of fp32's.
- BGE-M3: the dense vector's cosine with fp32's >= 0.999 on every text; the
  lexical weights' top-50 recall as above (they are reduced per token id with
  the serving code, ``serving.bge_m3.lexical_weights``).

Both sides run through the serving code (``RaggedEncoder`` over sessions from
``serving.runtime.open_session``), so what is gated is what is served.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splade_triton.artifacts.numerics import compare_weights, validation_texts
from splade_triton.serving.encoding import RaggedEncoder
from splade_triton.serving.splade import activate
from splade_triton.serving.tokens import load_tokenizer, pad_ids

__all__ = ["GATE", "BEIR_FIXTURE", "encode_texts", "splade_fidelity", "bge_m3_fidelity", "verdict"]

ROOT = Path(__file__).resolve().parents[2]
BEIR_FIXTURE = ROOT / "tests" / "fixtures" / "beir_tiny"

GATE = {
    "topk_recall_min": 0.99,        # top-50 recall pooled over texts
    "min_text_recall_min": 0.95,    # the worst text's top-50 recall
    "ndcg10_max_drop": 0.005,       # |nDCG@10 - fp32's|
    "dense_cosine_min": 0.999,      # BGE-M3: every text's dense vector
}


def encode_texts(session, tokenizer, texts, outputs=None, batch_size: int = 16, max_batch_tokens: int = 8192):
    """Per output name, the outputs for ``texts`` in order; texts batched ``batch_size``
    per request, each request padded to its own longest text (as the tokenizer model does)."""
    encoder = RaggedEncoder(session, max_batch_tokens, {n: d for n, d in (("token_weights", 0),) if
                                                       n in [o.name for o in session.get_outputs()]})
    encodings = tokenizer.encode_batch(list(texts))
    batches = [pad_ids(encodings[i: i + batch_size]) for i in range(0, len(encodings), batch_size)]
    results = encoder.run(batches, outputs)
    return batches, results


def _splade_vectors(session, tokenizer, texts) -> np.ndarray:
    _, results = encode_texts(session, tokenizer, texts, ["pooled_logits"])
    return activate(np.concatenate([r["pooled_logits"] for r in results]))


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
    figures = compare_weights(_splade_vectors(reference, tokenizer, sample),
                              _splade_vectors(candidate, tokenizer, sample), k=50)
    beir = load_beir(dataset)
    figures["ndcg10_fp32"] = _ndcg10(lambda t, _: _splade_vectors(reference, tokenizer, t), beir)
    figures["ndcg10"] = _ndcg10(lambda t, _: _splade_vectors(candidate, tokenizer, t), beir)
    figures["ndcg10_drop"] = figures["ndcg10_fp32"] - figures["ndcg10"]
    return verdict(figures)


def _bge_m3_outputs(session, tokenizer, texts, special, vocab: int):
    from splade_triton.serving.bge_m3 import lexical_weights

    batches, results = encode_texts(session, tokenizer, texts, ["dense", "token_weights"])
    dense = np.concatenate([r["dense"] for r in results])
    lexical = []
    for (ids, _), r in zip(batches, results):
        sparse = lexical_weights(ids, r["token_weights"], special)
        rows = np.zeros((ids.shape[0], vocab), np.float32)
        for i in range(ids.shape[0]):
            keep = sparse.indices[i] >= 0
            rows[i, sparse.indices[i][keep]] = sparse.values[i][keep]
        lexical.append(rows)
    return dense, np.concatenate(lexical)


def bge_m3_fidelity(reference, candidate, model_dir, texts: int = 64) -> dict:
    from splade_triton.serving.bge_m3 import read_export_info

    model_dir = Path(model_dir)
    info = read_export_info(model_dir / "export_info.json")
    tokenizer = load_tokenizer(model_dir / "tokenizer.json", info.get("max_length", 512))
    special = list(info["special_ids"].values())
    vocab = int(info["vocab_size"])
    words = [w.lstrip("\u2581") for w in tokenizer.get_vocab()]
    sample = validation_texts(texts, words, seed=0)
    dense_ref, lex_ref = _bge_m3_outputs(reference, tokenizer, sample, special, vocab)
    dense, lex = _bge_m3_outputs(candidate, tokenizer, sample, special, vocab)
    figures = compare_weights(lex_ref, lex, k=50)
    cos = (dense_ref * dense).sum(1) / np.maximum(np.linalg.norm(dense_ref, axis=1) * np.linalg.norm(dense, axis=1), 1e-12)
    figures["dense_cosine_min"] = float(cos.min())
    figures["dense_cosine_mean"] = float(cos.mean())
    figures["dense_max_abs_diff"] = float(np.abs(dense_ref - dense).max())
    return verdict(figures)


def verdict(figures: dict) -> dict:
    """``figures`` with ``gate``: "pass" or "fail", and ``failures``: what missed."""
    failures = []
    if figures["topk_recall"] < GATE["topk_recall_min"]:
        failures.append(f"top-50 recall {figures['topk_recall']:.4f} < {GATE['topk_recall_min']}")
    if figures["min_text_recall"] < GATE["min_text_recall_min"]:
        failures.append(f"worst text's top-50 recall {figures['min_text_recall']:.4f} < {GATE['min_text_recall_min']}")
    if "ndcg10_drop" in figures and abs(figures["ndcg10_drop"]) > GATE["ndcg10_max_drop"]:
        failures.append(f"nDCG@10 {figures['ndcg10']:.4f} vs fp32 {figures['ndcg10_fp32']:.4f}: "
                        f"more than {GATE['ndcg10_max_drop']} apart")
    if "dense_cosine_min" in figures and figures["dense_cosine_min"] < GATE["dense_cosine_min"]:
        failures.append(f"dense cosine {figures['dense_cosine_min']:.5f} < {GATE['dense_cosine_min']}")
    return {**figures, "gate": "fail" if failures else "pass", "failures": failures}
