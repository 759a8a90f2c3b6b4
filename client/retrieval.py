"""Retrievers over a search engine collection, their fusion, and bulk indexing into it.

Retrievers (``--retriever``):

- ``bm25``: the engine's BM25 over the documents' texts (its English analyzer: stemmer and
  stop words; :mod:`client.engine`);
- ``sparse``: the pipeline's sparse vectors (SPLADE weights, BGE-M3 lexical weights), inner product;
- ``dense``: BGE-M3's dense vectors, inner product (cosine: they are L2-normalised);
- ``colbert``: BGE-M3's ColBERT score (FlagEmbedding's ``colbert_score``) re-ranking the
  candidates of the RRF of sparse and dense;
- ``hybrid``: the retrievers with a weight above 0 (:data:`DEFAULT_WEIGHTS`), fused (ColBERT
  only re-scores candidates: at least one of bm25, sparse, dense must weigh above 0).

Queries are encoded as queries (``encode_queries``), documents as documents.

Where each part runs: bm25, sparse and dense run inside the engine, one engine search
each; their fusion runs here. RRF: Milvus Lite's ``hybrid_search`` re-queries its hits by
an unescaped id filter, which an id holding a quote breaks (:meth:`client.engine.Engine.search`).
Weighted: the engine's
``WeightedRanker`` (Milvus Lite 2.5) always normalises its inputs, and
normalises BM25 as if it were a distance (a better match scores lower). The
engine stores no multi-vectors, so ColBERT runs here: the candidates' stored
texts are encoded by the ``<model>_colbert`` ensemble and scored, and the
ColBERT score joins the fusion with the same formula.

Fusion (``--fusion``):

- ``rrf``: reciprocal rank fusion, sum over retrievers of 1 / (k + rank), k = 60
  (Milvus' ``RRFRanker`` formula, :func:`client.engine.rrf`; unweighted: a weight only says
  whether a retriever takes part);
- ``weighted``: BGE-M3's ``compute_score`` form, sum of weight x score divided by the sum of
  the weights, each retriever's scores first normalised (``--normalize``): ``minmax`` scales
  each retriever's candidates to [0, 1] per query; ``none`` keeps the raw scores
  (``compute_score`` exactly); ``arctan`` is the normalisation Milvus documents for its
  ``WeightedRanker`` (0.5 + arctan(s) / pi for inner products and ColBERT, 2 arctan(s) / pi
  for BM25).
  A document a retriever did not return gets 0 from it.

Defaults (:data:`DEFAULT_WEIGHTS`, :data:`DEFAULT_NORMALIZATION`) and the figures that chose
them: docs/retrieval.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bulk import encode_records, request_batches
from .core import BgeM3Client, SpladeClient, batched
from .engine import Engine, Request
from .m3 import colbert_scores

__all__ = ["DEFAULT_FUSION", "DEFAULT_WEIGHTS", "FUSIONS", "NORMALIZATIONS", "RETRIEVERS", "IndexReport", "Retriever", "index_documents",
           "parse_weights", "retrievers_of"]

RETRIEVERS = ("bm25", "sparse", "dense", "colbert", "hybrid")
FUSIONS = ("rrf", "weighted")
DEFAULT_FUSION = "weighted"
ENGINE_PARTS = ("bm25", "sparse", "dense")
RRF_K = 60
NORMALIZATIONS = ("minmax", "none", "arctan")
# SPLADE + BM25: min-max (measured, docs/retrieval.md: raw weights hold for one pair of score
# scales only; arctan puts a floor of 0.5 under any inner-product match, so BM25-only documents
# hardly rise). BGE-M3: its published weights are for raw scores (compute_score).
DEFAULT_NORMALIZATION = {"splade": "minmax", "bge_m3": "none"}
# The hybrid's parts and weights per kind of pipeline. SPLADE: min-max weights chosen on 400
# training queries of the stdlib-docstring fixture (docs/retrieval.md). BGE-M3: its published dense 0.4, sparse 0.2,
# ColBERT 0.4 (FlagEmbedding's weights_for_different_modes); BM25 left out (no real weights here
# to measure what it adds).
DEFAULT_WEIGHTS = {
    "splade": {"bm25": 0.5, "sparse": 0.5},
    "bge_m3": {"bm25": 0.0, "sparse": 0.2, "dense": 0.4, "colbert": 0.4},
}

Ranking = list[tuple[str, float]]  # (doc id, score), best first


def retrievers_of(kind: str) -> tuple[str, ...]:
    """The single retrievers a kind of pipeline has (``hybrid`` aside)."""
    return ("bm25", "sparse") if kind == "splade" else ("bm25", "sparse", "dense", "colbert")


def parse_weights(text: str | Mapping[str, float] | None, kind: str) -> dict[str, float]:
    """``"bm25=0.3,sparse=0.7"`` (or a mapping) -> the hybrid's weights; None: the defaults.

    Retrievers not named get weight 0 (they take no part)."""
    if text is None:
        return dict(DEFAULT_WEIGHTS[kind])
    allowed = retrievers_of(kind)
    if isinstance(text, str):
        items = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            try:
                items[name.strip()] = float(value) if sep else math.nan
            except ValueError:
                items[name.strip()] = math.nan
    else:
        items = dict(text)
    for name, value in items.items():
        if name not in allowed:
            raise ValueError(f"--weights: unknown retriever {name!r} for a {kind} pipeline; "
                             f"name some of {', '.join(allowed)}, e.g. bm25=0.5,sparse=0.5")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--weights: {name} must be a finite number >= 0, e.g. {name}=0.5")
    weights = {name: float(items.get(name, 0.0)) for name in allowed}
    if not any(weights.values()):
        raise ValueError("--weights: give at least one retriever a weight above 0")
    return weights


def _arctan(score: float, field: str) -> float:
    # Milvus' documented WeightedRanker normalisation for similarities (BM25 mapped to [0, 1)).
    return 2 * math.atan(score) / math.pi if field == "bm25" else 0.5 + math.atan(score) / math.pi


def _minmax(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    return {d: (s - low) / (high - low) if high > low else 1.0 for d, s in scores.items()}


class Retriever:
    """Answers queries from an :class:`~client.engine.Engine` collection.

    ``client``: the pipeline's client (queries are encoded by the server); ``retriever``,
    ``fusion``, ``weights``, ``normalize``: see the module docstring; ``candidates``: how many
    documents each retriever hands to the fusion and to ColBERT re-scoring (at least the ``k``
    asked).
    """

    def __init__(self, client: SpladeClient | BgeM3Client, engine: Engine, *, kind: str,
                 retriever: str = "hybrid", fusion: str = DEFAULT_FUSION, weights: str | Mapping[str, float] | None = None,
                 normalize: str | None = None, candidates: int = 100, query_top_k: int | None = None):
        if retriever not in RETRIEVERS:
            raise ValueError(f"unknown retriever {retriever!r}; choose one of {', '.join(RETRIEVERS)}")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if normalize is not None and normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if retriever != "hybrid" and retriever not in retrievers_of(kind):
            raise ValueError(f"retriever {retriever!r} needs a BGE-M3 pipeline; a {kind} pipeline has "
                             f"{', '.join(retrievers_of(kind))} and hybrid")
        if weights is not None and retriever != "hybrid":
            raise ValueError("--weights weigh the parts of the hybrid retriever")
        self.client, self.engine, self.kind = client, engine, kind
        self.retriever, self.fusion, self.candidates, self.query_top_k = retriever, fusion, candidates, query_top_k
        self.normalize = normalize or DEFAULT_NORMALIZATION[kind]
        if retriever == "hybrid":
            self.weights = {n: w for n, w in parse_weights(weights, kind).items() if w > 0}
            if not set(self.weights) & set(ENGINE_PARTS):
                raise ValueError("--weights: colbert re-scores the candidates of bm25, sparse or dense: give one of "
                                 "them a weight above 0 too (or --retriever colbert)")
        elif retriever == "colbert":  # ColBERT re-ranks what the sparse + dense RRF finds
            self.weights = {"sparse": 1.0, "dense": 1.0, "colbert": 1.0}
        else:
            self.weights = {retriever: 1.0}

    def describe(self) -> str:
        if self.retriever != "hybrid":
            return self.retriever
        parts = "+".join(self.weights)
        if self.fusion == "rrf":
            return f"hybrid {parts} (rrf)"
        weights = ",".join(f"{n}={w:g}" for n, w in self.weights.items())
        return f"hybrid {parts} (weighted {self.normalize} {weights})"

    def _encode_queries(self, queries: Sequence[str]) -> list[dict[str, Any]]:
        need = set(self.weights)
        if self.kind == "splade":
            vectors = self.client.encode_queries(list(queries), top_k=self.query_top_k) if "sparse" in need else None
            return [{"sparse": vectors[i] if vectors else None} for i in range(len(queries))]
        asked = dict(return_dense="dense" in need, return_sparse="sparse" in need,
                     return_colbert_vecs="colbert" in need)
        if not any(asked.values()):
            return [{} for _ in queries]
        embeddings = self.client.encode_queries(list(queries), top_k=self.query_top_k, **asked)
        return [{"sparse": e.sparse, "dense": e.dense, "colbert": e.colbert} for e in embeddings]

    def _requests(self, queries: Sequence[str], encoded: list[dict[str, Any]]) -> list[Request]:
        requests = []
        for part in (p for p in ENGINE_PARTS if p in self.weights):
            if part == "bm25":  # the engine analyses the query text as it did the documents'
                data = list(queries)
            elif part == "sparse":
                data = [{int(i): float(v) for i, v in zip(q["sparse"].indices, q["sparse"].values)} for q in encoded]
            else:
                data = [np.asarray(q["dense"], np.float32).tolist() for q in encoded]
            requests.append(Request(part, data))
        return requests

    def search(self, queries: Sequence[str], k: int = 10) -> list[Ranking]:
        """The ``k`` best documents of each query, ``(id, score)`` best first."""
        queries = list(queries)
        if not queries or k <= 0:
            return [[] for _ in queries]
        encoded = self._encode_queries(queries)
        requests = self._requests(queries, encoded)
        colbert = "colbert" in self.weights
        depth = max(k, self.candidates)
        if self.retriever == "hybrid" and self.fusion == "weighted":
            # One engine search per retriever, fused here: Milvus Lite's WeightedRanker always
            # normalises and treats BM25 as a distance (docs/retrieval.md).
            lists = [self.engine.search([r], limit=depth) for r in requests]
            fused = [self._weighted([dict(rows[i]) for rows in lists], [r.field for r in requests])
                     for i in range(len(queries))]
            if colbert:
                for f, late in zip(fused, self._colbert(encoded, [list(f) for f in fused])):
                    for d, s in self._normalized(late, "colbert").items():
                        f[d] = f.get(d, 0.0) + self.weights["colbert"] * s
            total = sum(self.weights.values())  # compute_score divides by the weights' sum
            return [sorted(((d, s / total) for d, s in f.items()), key=lambda x: -x[1])[:k] for f in fused]
        found = self.engine.search(requests, limit=depth if colbert else k, rrf_k=RRF_K, candidates=depth)
        if colbert:
            found = self._add_colbert(encoded, found)
        return [row[:k] for row in found]

    def _normalized(self, scores: Mapping[str, float], field: str) -> dict[str, float]:
        if self.normalize == "minmax":
            return _minmax(scores)
        if self.normalize == "arctan":
            return {d: _arctan(s, field) for d, s in scores.items()}
        return dict(scores)

    def _weighted(self, lists: list[dict[str, float]], fields: list[str]) -> dict[str, float]:
        fused: dict[str, float] = {}
        for scores, field in zip(lists, fields):
            for d, s in self._normalized(scores, field).items():
                fused[d] = fused.get(d, 0.0) + self.weights[field] * s
        return fused

    def _colbert(self, encoded: list[dict[str, Any]], candidates: list[list[str]]) -> list[dict[str, float]]:
        """ColBERT scores of each query's candidates: their stored texts encoded as documents."""
        texts = self.engine.texts(d for row in candidates for d in row)
        ids = list(texts)
        docs = dict(zip(ids, self.client.encode_corpus([texts[i] for i in ids], return_dense=False,
                                                       return_sparse=False, return_colbert_vecs=True))) if ids else {}
        out = []
        for query, row in zip(encoded, candidates):
            row = [d for d in row if d in docs]
            scores = colbert_scores(query["colbert"], [docs[d].colbert for d in row]) if row else []
            out.append({d: float(s) for d, s in zip(row, scores)})
        return out

    def _add_colbert(self, encoded: list[dict[str, Any]], found: list[Ranking]) -> list[Ranking]:
        """ColBERT re-scoring of the RRF candidates: ``colbert`` alone, or RRF continued."""
        late = self._colbert(encoded, [[d for d, _ in row] for row in found])
        out = []
        for row, scores in zip(found, late):
            if self.retriever == "colbert":
                fused = [(d, scores[d]) for d, _ in row if d in scores]
            else:  # the RRF continued with ColBERT's ranks of its candidates
                order = sorted(scores, key=lambda d: -scores[d])
                rank = {d: r for r, d in enumerate(order, 1)}
                fused = [(d, s + 1.0 / (RRF_K + rank[d])) for d, s in row if d in scores]
            fused.sort(key=lambda item: -item[1])  # stable: ties keep the engine's order
            out.append(fused)
        return out


@dataclass
class IndexReport:
    """What :func:`index_documents` did."""

    written: int = 0
    skipped: int = 0  # already in the collection, or a repeated id
    refused: int = 0  # texts the server refused (on_error "skip")
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def index_documents(client: SpladeClient | BgeM3Client, engine: Engine, records: Iterable[tuple[str, str]], *,
                    kind: str, batch_size: int = 64, max_request_bytes: int = 1_048_576, write_rows: int = 1024,
                    doc_top_k: int | None = None, progress: Callable[[int], None] | None = None,
                    report: IndexReport | None = None, on_error: str = "skip",
                    refused: Callable[[tuple[str, str], Exception], None] | None = None) -> IndexReport:
    """Encode ``(id, text)`` records and write them into ``engine``'s collection, resumably.

    Ids the collection already holds are skipped before anything is encoded (one engine query
    per ``write_rows`` records), as are repeated ids; writes are upserts of ``write_rows``
    documents at a time, so an interrupted run leaves whole documents, and the same call again
    adds exactly the missing ones. ``progress(n)`` is called with each record read;
    ``report`` (updated as it goes) tells a caller interrupted by Ctrl-C what was written.
    A record whose text the server refuses goes to ``refused(record, error)`` and is left out,
    or ends the run (``on_error="stop"``; :func:`client.bulk.encode_records`).
    """
    report = report or IndexReport()
    start = time.perf_counter()
    seen: set[str] = set()

    def fresh() -> Iterator[tuple[str, str]]:
        for chunk in batched(records, write_rows):
            present = engine.present([i for i, _ in chunk])
            for i, text in chunk:
                if i in present or i in seen:
                    report.skipped += 1
                    if progress:
                        progress(1)
                    continue
                seen.add(i)
                yield i, text

    def refuse(record: tuple[str, str], error: Exception) -> None:
        report.refused += 1
        if progress:
            progress(1)
        if refused is not None:
            refused(record, error)

    chunks = request_batches(fresh(), lambda r: r[1], batch_size=batch_size, max_request_bytes=max_request_bytes)
    batches = ((chunk, [t for _, t in chunk]) for chunk in chunks)
    options = dict(return_dense=True, return_sparse=True) if kind == "bge_m3" else {}
    results = encode_records(client.encode_batches, batches, on_error=on_error, refused=refuse,
                             name=lambda r: f"record {r[0]!r}", top_k=doc_top_k, input_type="document", **options)
    pending: list[tuple[tuple[str, str], Any]] = []

    def flush() -> None:
        if not pending:
            return
        ids, texts = [r[0] for r, _ in pending], [r[1] for r, _ in pending]
        vectors = [v for _, v in pending]
        if kind == "bge_m3":
            engine.write(ids, texts, [e.sparse for e in vectors], [e.dense for e in vectors])
        else:
            engine.write(ids, texts, vectors)
        report.written += len(pending)
        if progress:
            progress(len(pending))
        pending.clear()

    try:
        for chunk, vectors in results:
            pending.extend(zip(chunk, vectors))
            if len(pending) >= write_rows:
                flush()
        flush()
    except KeyboardInterrupt:
        flush()  # what is encoded is kept: a resume has less to do
        raise
    finally:
        report.seconds += time.perf_counter() - start
    return report
