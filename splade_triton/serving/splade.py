"""SPLADE math, in numpy, importable without Triton or torch.

SPLADE (Formal et al., "SPLADE v2", 2021) weights each vocabulary term by

    w_j = max_i log(1 + relu(logit_ij)) * mask_i

over the tokens i of a text. log1p(relu(.)) is monotone non-decreasing, so the
max can be taken over the raw logits first (padding masked out) and the
activation applied once per term: the exported encoder graph does the max,
this module does the rest.

Activations (``ACTIVATIONS``, named in a model's export_info.json; all
monotone, so the max-first order holds for each):

- ``log1p_relu``: log(1 + relu(x)), SPLADE's (sentence-transformers'
  SpladePooling ``activation_function="relu"``);
- ``log1p_log1p_relu``: log(1 + log(1 + relu(x))), OpenSearch's v3 document
  encoders (SpladePooling ``activation_function="log1p_relu"``);
- ``identity``: the pooled values are the weights already (an inference-free
  query side: a weight per token, looked up, no transformer).
"""

from __future__ import annotations

import numpy as np

from splade_triton.serving.sparse import SparseBatch, check_options, sparse_rows

__all__ = ["ACTIVATIONS", "activate", "max_over_windows", "reference_splade", "sparsify", "static_vectors", "SparseBatch"]


# name -> f(x) for x > 0 (every activation but identity is 0 for x <= 0).
ACTIVATIONS = {
    "log1p_relu": np.log1p,
    "log1p_log1p_relu": lambda x: np.log1p(np.log1p(x)),
    "identity": lambda x: x,
}


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return name


def activate(pooled_logits: np.ndarray, out: np.ndarray | None = None, activation: str = "log1p_relu") -> np.ndarray:
    """Term weights from the max-pooled MLM logits (default log1p(relu(x)))."""
    check_activation(activation)
    if activation == "identity":
        if out is None:
            return pooled_logits.copy()
        np.copyto(out, pooled_logits)
        return out
    out = np.maximum(pooled_logits, 0.0, out=out)
    out = np.log1p(out, out=out)
    if activation == "log1p_log1p_relu":
        out = np.log1p(out, out=out)
    return out


def reference_splade(logits: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The literal SPLADE formula on [batch, seq, vocab] logits (for validation).

    Same as text-embeddings-inference's ``--pooling splade`` and
    sentence-transformers' ``SpladePooling(pooling_strategy="max")``.
    """
    weights = np.log1p(np.maximum(logits, 0.0)) * attention_mask[..., None]
    return weights.max(axis=1)


def sparsify(pooled_logits: np.ndarray, top_k: int = 0, min_weight: float = 0.0,
             activation: str = "log1p_relu") -> SparseBatch:
    """Keep the non-zero SPLADE weights of each row of max-pooled logits.

    Args:
        pooled_logits: float32 [n, vocab], the encoder's max over tokens of the
            masked MLM logits (before the activation).
        top_k: keep at most this many terms per text, the largest
            (sentence-transformers' ``max_active_dims``); 0 keeps all.
        min_weight: drop terms whose weight is below this (after the activation).
        activation: a name of ``ACTIVATIONS``.
    """
    if pooled_logits.ndim != 2:
        raise ValueError(f"pooled_logits must be 2-D [n, vocab], got shape {pooled_logits.shape}")
    check_options(top_k, min_weight)
    check_activation(activation)

    n = pooled_logits.shape[0]
    # Only the positive logits have a non-zero weight (identity: the non-zero
    # ones); working on them alone avoids a full [n, vocab] activation pass.
    rows, cols = np.nonzero(pooled_logits != 0 if activation == "identity" else pooled_logits > 0)
    vals = ACTIVATIONS[activation](pooled_logits[rows, cols])
    if min_weight > 0:
        keep = vals >= min_weight
        rows, cols, vals = rows[keep], cols[keep], vals[keep]

    return sparse_rows(n, rows, cols, vals, top_k)


def max_over_windows(pooled: np.ndarray, text_index: np.ndarray | None) -> np.ndarray:
    """[rows, vocab] -> [texts, vocab]: the max over each text's rows (consecutive, in text order).

    A chunked text's windows are rows of its own; SPLADE's max over tokens,
    taken across windows too, is its vector. ``text_index`` names each row's
    text; None or one row per text returns ``pooled`` as it is.
    """
    if text_index is None or text_index.size == 0 or text_index[-1] + 1 == text_index.size:
        return pooled  # one row per text
    starts = np.flatnonzero(np.r_[True, text_index[1:] != text_index[:-1]])
    return np.maximum.reduceat(pooled, starts, axis=0)


def static_vectors(weights: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[n, vocab]: each distinct token's weight where the mask is set.

    An inference-free query side (sentence-transformers' SparseStaticEmbedding):
    a text's vector is the looked-up weight of each of its tokens, no transformer.
    """
    out = np.zeros((ids.shape[0], weights.shape[0]), dtype=np.float32)
    rows, cols = np.nonzero(mask)
    tokens = ids[rows, cols]
    out[rows, tokens] = weights[tokens]
    return out

