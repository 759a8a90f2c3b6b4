"""Fidelity of a reduced-precision encoder against the FP32 reference.

Used by ``export.validate_engine`` (TensorRT plan vs ONNX Runtime FP32) and
``export.check_gpu_numerics`` (CUDA FP16 through torch / onnxruntime). Pure
numpy; no GPU needed to import or test.
"""

from __future__ import annotations

import numpy as np

from splade_triton.artifacts.texts import VARIED_TEXTS
from splade_triton.serving.tokens import pad_ids

__all__ = ["compare_weights", "padded_batches", "top_terms", "validation_texts"]

_QUERY_TEMPLATES = (
    "what is {0}",
    "how to {0} {1}",
    "{0} vs {1}",
    "best {0} for {1} in {2}",
    "why does {0} {1}",
    "{0} {1} definition",
)


def validation_texts(count: int, vocabulary: list[str], seed: int = 0) -> list[str]:
    """``count`` varied texts, deterministic for a seed.

    The project's hand-written edge cases (scripts, emoji, markup, empty and
    512+-token texts) first, then query-like texts and passages of 1 to ~600
    words drawn from the model's own vocabulary, with casing, punctuation and
    slices of the hand-written texts mixed in, so lengths cover every
    tokenizer bucket. No data set ships with the project (or is reachable
    here), so most are not natural prose; they exercise the numerics across
    lengths, batch padding and vocabulary, which is what a precision check
    needs.
    """
    # Sorted: a tokenizer hands its vocabulary out in no fixed order.
    words = sorted({w for w in vocabulary if w.isalpha() and not w.startswith("##") and len(w) > 1})
    if len(words) < 100:
        raise ValueError("the vocabulary has too few whole words to draw texts from")
    rng = np.random.default_rng(seed)
    texts = list(VARIED_TEXTS[:count])
    while len(texts) < count:
        kind = len(texts) % 4
        if kind == 0:
            picks = rng.choice(words, size=3)
            texts.append(_QUERY_TEMPLATES[int(rng.integers(len(_QUERY_TEMPLATES)))].format(*picks))
            continue
        n_words = int(np.exp(rng.uniform(0.0, np.log(600))))
        chosen = list(rng.choice(words, size=n_words))
        if kind == 2:
            chosen = [w.capitalize() if rng.random() < 0.2 else w for w in chosen]
            for i in range(0, len(chosen), 12):
                chosen[i] += "."
        text = " ".join(chosen)
        if kind == 3:
            extra = VARIED_TEXTS[int(rng.integers(len(VARIED_TEXTS)))]
            text = f"{text} {extra[: int(rng.integers(1, max(2, len(extra))))]}"
        texts.append(text)
    return texts


def padded_batches(tokenizer, texts, shapes, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, mask) int64 batches of ``texts`` in order, each padded to its longest
    text's length bucket (``shapes.padded_length``), as the GPU tokenizer pads them."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    batches = []
    for start in range(0, len(encodings), batch_size):
        chunk = encodings[start : start + batch_size]
        batches.append(pad_ids(chunk, shapes.padded_length(max(len(e.ids) for e in chunk))))
    return batches


def top_terms(weights: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the indices of the ``k`` largest non-zero weights (all if fewer)."""
    result = []
    for row in weights:
        nonzero = np.flatnonzero(row > 0)
        if nonzero.size > k:
            nonzero = nonzero[np.argsort(-row[nonzero], kind="stable")[:k]]
        result.append(nonzero)
    return result


def compare_weights(reference: np.ndarray, candidate: np.ndarray, k: int = 50) -> dict:
    """How well ``candidate`` SPLADE weights keep ``reference``'s, per text.

    Both are [texts, vocab] weights (after log1p(relu)). Reports the max and
    mean absolute difference, and the recall of each text's top-``k`` terms:
    of the reference's top k (its non-zero terms if fewer), the share also in
    the candidate's top k. ``topk_recall`` pools all texts (terms kept / terms
    expected); ``min_text_recall`` is the worst text's. ``topk_mass_recall`` /
    ``min_text_mass_recall``: the same, each term counted by its reference
    weight (the share of the top k's weight kept): a sparse dot product loses
    a dropped term's weight, so a term of weight 0.003 dropped to 0, or two
    terms 0.1% apart swapped at the k-th place, cost what they are worth there,
    not a whole term each.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    expected_total = kept_total = 0
    mass_expected = mass_kept = 0.0
    recalls, mass_recalls = [], []
    for row, ref, cand in zip(reference, top_terms(reference, k), top_terms(candidate, k)):
        if ref.size == 0:
            continue
        kept = np.intersect1d(ref, cand, assume_unique=True)
        expected_total += ref.size
        kept_total += kept.size
        recalls.append(kept.size / ref.size)
        weight, weight_kept = float(row[ref].sum(dtype=np.float64)), float(row[kept].sum(dtype=np.float64))
        mass_expected += weight
        mass_kept += weight_kept
        mass_recalls.append(weight_kept / weight)
    return {
        "texts": int(reference.shape[0]),
        "k": k,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "topk_recall": kept_total / expected_total if expected_total else 1.0,
        "min_text_recall": min(recalls) if recalls else 1.0,
        "topk_mass_recall": mass_kept / mass_expected if mass_expected else 1.0,
        "min_text_mass_recall": min(mass_recalls) if mass_recalls else 1.0,
        "texts_below_full_recall": int(sum(r < 1.0 for r in recalls)),
        "texts_without_terms": int(reference.shape[0] - len(recalls)),
        "nonzero_mismatches": int(((reference > 0) != (candidate > 0)).sum()),
    }
