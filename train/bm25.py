"""BM25 (bm25s, English stemmer and stop words): the baseline of the evaluation and the retriever
of hard-negative mining."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from .data import Example

__all__ = ["BM25", "mine_negatives"]


class BM25:
    """A bm25s index over ``texts``; :meth:`search` gives (position, score) pairs, best first."""

    def __init__(self, texts: Sequence[str]):
        import bm25s
        import Stemmer

        self._bm25s = bm25s
        self._stemmer = Stemmer.Stemmer("english")
        self.size = len(texts)
        self.retriever = bm25s.BM25()
        self.retriever.index(self._tokens(texts), show_progress=False)

    def _tokens(self, texts: Sequence[str]):
        return self._bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        k = min(k, self.size)
        if not queries or k <= 0:
            return [[] for _ in queries]
        docs, scores = self.retriever.retrieve(self._tokens(queries), k=k, show_progress=False, n_threads=1)
        return [[(int(d), float(s)) for d, s in zip(row_d, row_s) if s > 0]
                for row_d, row_s in zip(np.asarray(docs), np.asarray(scores))]


def mine_negatives(examples: list[Example], corpus: Sequence[str], count: int, ranks: tuple[int, int] = (3, 50),
                   seed: int = 12) -> list[Example]:
    """Add ``count`` BM25 hard negatives to each example from ``corpus`` (plus every text of the data).

    Candidates are the hits ranked ``ranks[0]..ranks[1]`` (1-based; the very top hits of a
    query are left out: they are often unjudged positives), minus the query's own positives
    and negatives; ``count`` of them are drawn at random (seeded). A query with too few
    candidates gets what there is.
    """
    texts = list(dict.fromkeys([*corpus, *(t for e in examples for t in (*e.pos, *e.neg))]))
    index = BM25(texts)
    rng = random.Random(seed)
    hits = index.search([e.query for e in examples], ranks[1])
    mined = []
    for e, row in zip(examples, hits):
        own = set(e.pos) | set(e.neg)
        candidates = [texts[d] for d, _ in row[ranks[0] - 1:] if texts[d] not in own]
        extra = rng.sample(candidates, min(count, len(candidates)))
        # Teacher scores cannot cover mined texts: mining drops them.
        mined.append(Example(e.query, e.pos, e.neg + extra, None, None, e.line))
    return mined
