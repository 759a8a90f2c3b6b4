"""BGE-M3 serving math, in numpy, importable without Triton or torch.

BGE-M3 (FlagEmbedding's BGEM3FlagModel) computes from one XLM-RoBERTa pass:

- dense: the ``<s>`` hidden state, L2-normalised (done in the exported graph);
- lexical weights: per token ``w_i = relu(sparse_linear(h_i))`` (the graph's
  ``token_weights``); per text, for each token id, the max of ``w`` over its
  occurrences, the ids of ``<s>``, ``</s>``, ``<pad>`` and ``<unk>`` dropped
  (``<mask>`` is kept) and weights <= 0 dropped (this module);
- colbert: one L2-normalised vector per token after ``<s>`` (the graph).

The lexical weights are reduced from per-token values: no tensor of
vocabulary width (250002 floats per text) ever exists.
"""

from __future__ import annotations

import json
import os

import numpy as np

from splade_triton.serving.sparse import SparseBatch, check_options, sparse_rows

__all__ = ["SPECIAL_TOKENS", "lexical_weights", "read_export_info"]

# The special tokens FlagEmbedding leaves out of the lexical weights.
SPECIAL_TOKENS = ("cls", "eos", "pad", "unk")


def read_export_info(path) -> dict:
    """export_info.json of a BGE-M3 export: its ``max_length`` and ``special_ids``, checked."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"export info not found: {path} (export the model with python -m export.export_onnx)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if info.get("kind") != "bge_m3":
        raise ValueError(f"{path} describes a {info.get('kind')!r} export, not a bge_m3 one")
    length = info.get("max_length")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"{path}: max_length must be an integer >= 2, got {length!r}")
    special = info.get("special_ids") or {}
    missing = [k for k in SPECIAL_TOKENS if not isinstance(special.get(k), int)]
    if missing:
        raise ValueError(f"{path}: special_ids lacks {missing}")
    return info


def lexical_weights(input_ids: np.ndarray, token_weights: np.ndarray, special_ids, top_k: int = 0,
                    min_weight: float = 0.0) -> SparseBatch:
    """Per text, the max token weight of each token id, as sorted sparse rows.

    Args:
        input_ids: int [n, L], the ids the encoder ran on (padding: any id with weight 0).
        token_weights: float32 [n, L], ``relu(sparse_linear(h)) * mask`` per token.
        special_ids: ids left out (``<s>``, ``</s>``, ``<pad>``, ``<unk>``).
        top_k: keep at most this many ids per text, the largest; 0 keeps all.
        min_weight: drop ids whose weight is below this.

    Rows are sorted by weight descending, ties by id ascending; ``indices``
    int32 padded with -1, ``values`` float32 padded with 0 (as ``sparsify``).
    """
    if input_ids.ndim != 2 or input_ids.shape != token_weights.shape:
        raise ValueError(f"input_ids {input_ids.shape} and token_weights {token_weights.shape} must be the same 2-D shape")
    check_options(top_k, min_weight)
    n = input_ids.shape[0]
    keep = token_weights > 0
    if min_weight > 0:
        keep &= token_weights >= min_weight
    keep &= ~np.isin(input_ids, np.asarray(list(special_ids), dtype=input_ids.dtype))
    rows, positions = np.nonzero(keep)
    ids = input_ids[rows, positions].astype(np.int64, copy=False)
    weights = token_weights[rows, positions].astype(np.float32, copy=False)

    # The max over each (text, id): sorted by text, id, weight descending, the
    # first of each run is it.
    order = np.lexsort((-weights, ids, rows))
    rows, ids, weights = rows[order], ids[order], weights[order]
    first = np.ones(rows.size, dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (ids[1:] != ids[:-1])
    rows, ids, weights = rows[first], ids[first], weights[first]

    return sparse_rows(n, rows, ids, weights, top_k)
