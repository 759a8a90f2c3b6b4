"""Vocabulary ids -> UTF-8 terms for the ``tokens`` output."""

from __future__ import annotations

import numpy as np

__all__ = ["TermTable", "beyond_tokenizer_term"]


def beyond_tokenizer_term(index: int) -> bytes:
    """The term of an id the tokenizer does not have: ``[unused<id>]``.

    Masked-LM heads are often padded past the tokenizer's vocabulary (30528
    rows for a 30522-entry BERT tokenizer, a multiple of 64 for speed); those
    rows have weights, so their ids can come out of the encoder. No text
    tokenizes to them, so they can never match a query term; each still gets
    its own string (like BERT's ``[unused0]``...), so ``tokens`` stays one
    string per index and "" keeps meaning padding only.
    """
    return f"[unused{index}]".encode()


class TermTable:
    """Lookup of term strings by vocabulary id: -1 (padding) -> b"".

    Ids at or past the tokenizer's size, up to any encoder width, map to
    beyond_tokenizer_term(id); the table grows to them on first use instead
    of failing the whole execution with an IndexError.
    """

    def __init__(self, vocab: dict[str, int]):
        size = max(vocab.values(), default=-1) + 1
        self.tokenizer_size = size
        # The last slot answers index -1.
        self._terms = np.empty(size + 1, dtype=object)
        self._terms[:] = b""
        for term, i in vocab.items():
            self._terms[i] = term.encode("utf-8")
        # Holes in a tokenizer's ids (rare) get a name too, never b"".
        holes = np.flatnonzero(self._terms[:size] == b"")
        for i in holes:
            self._terms[i] = beyond_tokenizer_term(int(i))

    def _grow(self, size: int) -> None:
        known = self._terms.size - 1
        terms = np.empty(size + 1, dtype=object)
        terms[:known] = self._terms[:known]
        terms[known:size] = [beyond_tokenizer_term(i) for i in range(known, size)]
        terms[size] = b""
        self._terms = terms

    def lookup(self, indices: np.ndarray) -> np.ndarray:
        """Object array of bytes, the shape of ``indices`` (ids >= -1)."""
        if indices.size:
            top = int(indices.max())
            if top >= self._terms.size - 1:
                self._grow(top + 1)
        return self._terms[indices]
