"""Texts longer than their side's max_length: truncated, refused, or cut into windows.

The tokenizer (``tokenizers``, truncation enabled with a ``stride``) already
cuts a long text into pieces of ``max_length`` tokens, each with the special
tokens, consecutive pieces sharing ``stride`` tokens: the main encoding and
its ``overflowing`` list. This module turns that into the encoder's rows:

- ``truncate``: the main encoding only (what every anchor server does);
- ``error``: a text with more tokens than ``max_length`` is refused;
- ``chunk``: every piece is a row (a window); the pipeline's last step takes
  the max over a text's windows (SPLADE's own aggregation).

Whatever the mode, each text's full token count (special tokens included, as
if there were no limit) is reported, so callers can see what was cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Tokenized", "TextTooLong", "special_count", "cut"]


class TextTooLong(ValueError):
    """``overflow`` is ``error`` and a text has more tokens than allowed."""


@dataclass
class Tokenized:
    rows: list  # token id lists (or Encodings), one per window; texts in order, windows in text order
    text_index: np.ndarray  # int32 [rows]: the text (0..n-1) each row belongs to
    num_tokens: np.ndarray  # int32 [n]: the whole text's tokens, special tokens included
    truncated: np.ndarray  # bool [n]: tokens were dropped
    windows: np.ndarray  # int32 [n]: rows encoded for the text (1 unless chunked)


def special_count(tokenizer, special_tokens: bool) -> int:
    """Tokens the post-processor adds to one text ([CLS] and [SEP]: 2), 0 without special tokens."""
    processor = tokenizer.post_processor
    return processor.num_special_tokens_to_add(False) if special_tokens and processor is not None else 0


def cut(encodings: Sequence, overflow: str, max_length: int, special: int, stride: int,
        direction: str = "right") -> Tokenized:
    """Rows for the encoder from ``encodings`` (``tokenizers`` Encodings truncated at ``max_length``
    with ``stride``); ``special`` is special_count(). Raises TextTooLong in ``error`` mode."""
    rows, owners = [], []
    counts = np.empty(len(encodings), dtype=np.int32)
    windows = np.ones(len(encodings), dtype=np.int32)
    for i, encoding in enumerate(encodings):
        length = len(encoding)  # no list of ids built
        # Only a text that filled max_length can have overflowed: short texts
        # (nearly all) never build their overflowing list.
        pieces = encoding.overflowing if length >= max_length else []
        # Each overflowing piece repeats `stride` tokens of its neighbour.
        counts[i] = length + sum(len(p.ids) - special - stride for p in pieces)
        if pieces and overflow == "error":
            raise TextTooLong(f"text {i} has {counts[i]} tokens; the limit is {max_length}")
        if pieces and overflow == "chunk":
            # Right truncation keeps the start first; left keeps the end first.
            ordered = [encoding, *pieces] if direction == "right" else [*reversed(pieces), encoding]
            rows += ordered
            owners += [i] * len(ordered)
            windows[i] = len(ordered)
        else:
            rows.append(encoding)
            owners.append(i)
    truncated = (counts > max_length) & (windows == 1)
    return Tokenized(rows, np.asarray(owners, dtype=np.int32), counts, truncated, windows)
