"""Scoring sparse vectors, and an in-memory inverted index over them.

SPLADE's relevance score is the dot product of the query's and the document's
vectors: only the terms both have count. The index keeps the documents as a
term-major ``scipy.sparse`` matrix (a posting list per vocabulary id), so a
query touches only the postings of its own terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from .formats import SparseVector, _floats, to_csr

__all__ = [
    "Hit",
    "MatchedTerm",
    "SparseIndex",
    "compute_lexical_matching_score",
    "dot",
    "score_matrix",
]


def dot(query: SparseVector, document: SparseVector) -> float:
    """Sparse dot product of two vectors."""
    return query.dot(document)


def score_matrix(queries: Sequence[SparseVector], documents: Sequence[SparseVector]) -> np.ndarray:
    """``[len(queries), len(documents)]`` dot products (float64), by sparse matrix product."""
    width = 1 + max((int(v.indices.max()) for v in (*queries, *documents) if len(v)), default=0)
    q = to_csr(queries, width).astype(np.float64)
    d = to_csr(documents, width).astype(np.float64)
    return np.asarray((q @ d.T).todense()).reshape(len(queries), len(documents))


def _lexical_score(lw1: Mapping[str, float], lw2: Mapping[str, float]) -> float:
    if len(lw2) < len(lw1):
        lw1, lw2 = lw2, lw1
    return float(sum(w * lw2[t] for t, w in lw1.items() if t in lw2))


def compute_lexical_matching_score(lexical_weights_1, lexical_weights_2):
    """BGE-M3's lexical matching score, with FlagEmbedding's semantics.

    Two ``lexical_weights`` dicts (``{"<token id>": weight}``) give the sum of
    ``w1 * w2`` over the token ids they share, a float; two lists of them give
    the ``[len(list1), len(list2)]`` numpy matrix of those scores. Anything else
    is a ``ValueError``, as in FlagEmbedding.
    """
    if isinstance(lexical_weights_1, Mapping) and isinstance(lexical_weights_2, Mapping):
        return _lexical_score(lexical_weights_1, lexical_weights_2)
    if isinstance(lexical_weights_1, list) and isinstance(lexical_weights_2, list):
        return np.array([[_lexical_score(a, b) for b in lexical_weights_2] for a in lexical_weights_1])
    raise ValueError("lexical weights must be two dicts or two lists of dicts")


@dataclass(frozen=True)
class MatchedTerm:
    """A term query and document share, and what it adds to the score."""

    index: int
    token: str | None
    query_weight: float
    document_weight: float

    @property
    def contribution(self) -> float:
        return self.query_weight * self.document_weight


@dataclass(frozen=True)
class Hit:
    """One retrieved document: its id, score, and the shared terms, largest contribution first."""

    id: str
    score: float
    terms: tuple[MatchedTerm, ...]


class SparseIndex:
    """An in-memory inverted index of document vectors, searched by sparse dot product.

    >>> index = SparseIndex(["d1", "d2"], client.encode(["paris is in france", "rome is in italy"]))
    >>> index.search(client.encode("capital of france", return_tokens=True), k=1)[0].id
    'd1'
    """

    def __init__(self, ids: Sequence[str], vectors: Sequence[SparseVector], vocab_size: int | None = None):
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(set(ids)) != len(ids):
            raise ValueError("document ids must be unique")
        widest = 1 + max((int(v.indices.max()) for v in vectors if len(v)), default=0)
        self.vocab_size = max(vocab_size or 0, widest)
        self.ids = [str(i) for i in ids]
        # Document-major rows to explain a hit; term-major postings to score a query.
        self._documents = to_csr(vectors, self.vocab_size)
        self._postings = self._documents.T.tocsr()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def postings(self) -> scipy.sparse.csr_matrix:
        """``[vocab_size, documents]``: row ``t`` is the posting list of term ``t``."""
        return self._postings

    def scores(self, query: SparseVector) -> np.ndarray:
        """The dot product of ``query`` with every document (float64, zeros where nothing matches)."""
        return np.asarray((self._query_row(query) @ self._postings).todense()).reshape(-1)

    def _query_row(self, query: SparseVector) -> scipy.sparse.csr_matrix:
        keep = query.indices < self.vocab_size  # terms no document has add nothing
        return scipy.sparse.csr_matrix(
            (query.values[keep].astype(np.float64), query.indices[keep], [0, int(keep.sum())]),
            shape=(1, self.vocab_size))

    def search(self, query: SparseVector, k: int = 10) -> list[Hit]:
        """The ``k`` best documents with a positive score, best first (ties: indexing order)."""
        if k <= 0 or not len(self):
            return []
        row = (self._query_row(query) @ self._postings).tocsr()
        docs, scores = row.indices, row.data
        positive = scores > 0
        docs, scores = docs[positive], scores[positive]
        order = np.lexsort((docs, -scores))[:k]
        return [self._hit(query, int(docs[i]), float(scores[i])) for i in order]

    def _hit(self, query: SparseVector, doc: int, score: float) -> Hit:
        start, end = self._documents.indptr[doc], self._documents.indptr[doc + 1]
        doc_indices = self._documents.indices[start:end]
        doc_values = self._documents.data[start:end]
        common, qi, di = np.intersect1d(query.indices, doc_indices, assume_unique=True, return_indices=True)
        query_weights, doc_weights = _floats(query.values[qi]), _floats(doc_values[di])
        terms = [
            MatchedTerm(int(t), query.tokens[a] if query.tokens is not None else None, wq, wd)
            for t, a, wq, wd in zip(common, qi, query_weights, doc_weights)
        ]
        terms.sort(key=lambda m: (-m.contribution, m.index))
        return Hit(self.ids[doc], score, tuple(terms))
