"""Token ids: the tokenizer as served, and padding ragged id lists into tensors.

The one place where token ids are padded: the tokenizer model pads the texts
of a request, the encoder re-pads texts regrouped by length, and the tools
outside serving (export checks, benchmarks, tests) import these too. Numpy
only: no per-row Python loop over the ids.

    tokenizer = load_tokenizer("tokenizer.json", max_length=512)
    encodings = tokenizer.encode_batch(texts)
    ids, mask = pad_ids(encodings)                    # int64 [n, longest]
    ids, mask = pad_ids([[101, 102], [101, 7, 102]], length=8)
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

__all__ = ["load_tokenizer", "pad_ids", "pad_segments", "round_length"]


def load_tokenizer(path, max_length: int = 512):
    """The model's fast tokenizer set up as the served tokenizer model uses it.

    Truncation at ``max_length`` tokens (special tokens included) and no
    padding: tokenizer.json files often enable BatchLongest padding, which
    would pad every text of an ``encode_batch`` call to the longest one.
    Raises FileNotFoundError / ValueError with a message naming the file.
    """
    from tokenizers import Tokenizer  # the served runtime has it; numpy-only users need not

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {path} (run export/export_onnx.py)")
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as e:
        raise ValueError(f"cannot load tokenizer file {path}: {e}") from None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def round_length(length: int, multiple: int = 1, limit: int | None = None) -> int:
    """``length`` rounded up to a multiple of ``multiple``, never past ``limit``."""
    rounded = -(-length // multiple) * multiple
    return rounded if limit is None else min(rounded, limit)


def pad_segments(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, length: int | None = None,
                 dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``flat[starts[i] : starts[i] + lengths[i]]``, right-padded with 0 to ``length``.

    Returns (ids, attention_mask), both ``dtype`` [len(starts), length];
    ``length`` defaults to the longest row and must not be shorter.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    longest = int(lengths.max()) if lengths.size else 0
    length = longest if length is None else int(length)
    if length < longest:
        raise ValueError(f"cannot pad rows of up to {longest} tokens to {length}")
    positions = np.arange(length, dtype=np.int64)
    mask = positions < lengths[:, None]
    ids = np.zeros(mask.shape, dtype=dtype)
    if flat.size:
        ids[mask] = flat[(starts[:, None] + positions)[mask]]
    return ids, mask.astype(dtype)


def pad_ids(rows: Sequence, length: int | None = None, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Id lists (or ``tokenizers.Encoding``s) -> right-padded (ids, attention_mask).

    ``length`` defaults to the longest row and must not be shorter; padding
    ids are 0 with mask 0, as BERT-style encoders expect.
    """
    lists = [r.ids if hasattr(r, "ids") else r for r in rows]
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    longest = int(lengths.max()) if lengths.size else 0
    length = longest if length is None else int(length)
    if length < longest:
        raise ValueError(f"cannot pad rows of up to {longest} tokens to {length}")
    mask = np.arange(length, dtype=np.int64) < lengths[:, None]
    ids = np.zeros(mask.shape, dtype=dtype)
    if len(lists) == 1:
        ids[0, :longest] = lists[0]
    else:
        # One C-level conversion of all ids, written row-major into the
        # mask's True cells: exactly each row's tokens, left-aligned.
        flat: list[int] = []
        for row in lists:
            flat += row
        ids[mask] = flat
    return ids, mask.astype(dtype)
