"""Retrievers over a search engine collection, their fusion, and bulk indexing into it.

Retrievers (``--retriever``):

- ``bm25``: the engine's BM25 over the documents' terms (analysed by bm25s: English stop
  words, Snowball stemmer; :mod:`client.engine`);
- ``sparse``: the pipeline's sparse vectors (SPLADE weights, BGE-M3 lexical weights), inner product;
- ``dense``: BGE-M3's dense vectors, inner product (cosine: they are L2-normalised);
- ``colbert``: BGE-M3's ColBERT score (FlagEmbedding's ``colbert_score``) re-ranking the
  candidates of the engine's RRF of sparse and dense;
- ``hybrid``: the retrievers with a weight above 0 (:data:`DEFAULT_WEIGHTS`), fused.

Where each part runs: bm25, sparse and dense, and their fusion, run inside the
engine (one ``search`` or ``hybrid_search``). The engine stores no multi-vectors,
so ColBERT runs here: the candidates' stored texts are encoded by the
``<model>_colbert`` ensemble and scored, and the ColBERT score joins the engine's
fusion on the client with the same formula.

Fusion (``--fusion``):

- ``rrf``: reciprocal rank fusion, sum over retrievers of 1 / (k + rank), k = 60
  (Milvus' ``RRFRanker``; unweighted: a weight only says whether a retriever takes part);
- ``weighted``: BGE-M3's ``compute_score``: sum of weight x score divided by the sum of the
  weights, each score first mapped to [0, 1] by Milvus' ``WeightedRanker`` normalisation
  (0.5 + arctan(s) / pi for inner products and ColBERT, 2 arctan(s) / pi for BM25), so that
  BM25's unbounded scores and the models' scores can be added.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core import BgeM3Client, SpladeClient, batched
from .engine import Engine, Request, bm25_terms
from .m3 import colbert_scores

__all__ = ["DEFAULT_WEIGHTS", "FUSIONS", "RETRIEVERS", "IndexReport", "Retriever", "index_documents",
           "parse_weights", "retrievers_of"]

RETRIEVERS = ("bm25", "sparse", "dense", "colbert", "hybrid")
FUSIONS = ("rrf", "weighted")
ENGINE_PARTS = ("bm25", "sparse", "dense")
RRF_K = 60
# The hybrid's parts and weights per kind of pipeline. SPLADE: chosen on the training queries of
# the stdlib-docstring fixture (docs/retrieval.md). BGE-M3: its published dense 0.4, sparse 0.2,
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


def _normalised(score: float, field: str) -> float:
    # Milvus WeightedRanker's normalisation (checked against its hybrid_search output).
    return 2 * math.atan(score) / math.pi if field == "bm25" else 0.5 + math.atan(score) / math.pi


class Retriever:
    """Answers queries from an :class:`~client.engine.Engine` collection.

    ``client``: the pipeline's client (queries are encoded by the server); ``retriever``,
    ``fusion``, ``weights``: see the module docstring; ``candidates``: how many documents each
    retriever hands to the fusion and to ColBERT re-scoring (at least the ``k`` asked).
    """

    def __init__(self, client: SpladeClient | BgeM3Client, engine: Engine, *, kind: str,
                 retriever: str = "hybrid", fusion: str = "rrf", weights: str | Mapping[str, float] | None = None,
                 candidates: int = 100, query_top_k: int | None = None):
        if retriever not in RETRIEVERS:
            raise ValueError(f"unknown retriever {retriever!r}; choose one of {', '.join(RETRIEVERS)}")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if retriever != "hybrid" and retriever not in retrievers_of(kind):
            raise ValueError(f"retriever {retriever!r} needs a BGE-M3 pipeline; a {kind} pipeline has "
                             f"{', '.join(retrievers_of(kind))} and hybrid")
        if weights is not None and retriever != "hybrid":
            raise ValueError("--weights weigh the parts of the hybrid retriever")
        self.client, self.engine, self.kind = client, engine, kind
        self.retriever, self.fusion, self.candidates, self.query_top_k = retriever, fusion, candidates, query_top_k
        if retriever == "hybrid":
            self.weights = {n: w for n, w in parse_weights(weights, kind).items() if w > 0}
        elif retriever == "colbert":  # ColBERT re-ranks what the engine's sparse + dense RRF finds
            self.weights = {"sparse": 1.0, "dense": 1.0, "colbert": 1.0}
        else:
            self.weights = {retriever: 1.0}

    def describe(self) -> str:
        if self.retriever != "hybrid":
            return self.retriever
        parts = "+".join(self.weights)
        weights = ",".join(f"{n}={w:g}" for n, w in self.weights.items()) if self.fusion == "weighted" else ""
        return f"hybrid {parts} ({self.fusion}{' ' + weights if weights else ''})"

    def _encode_queries(self, queries: Sequence[str]) -> list[dict[str, Any]]:
        need = set(self.weights)
        if self.kind == "splade":
            vectors = self.client.encode(list(queries), top_k=self.query_top_k) if "sparse" in need else None
            return [{"sparse": vectors[i] if vectors else None} for i in range(len(queries))]
        asked = dict(return_dense="dense" in need, return_sparse="sparse" in need,
                     return_colbert_vecs="colbert" in need)
        if not any(asked.values()):
            return [{} for _ in queries]
        embeddings = self.client.encode(list(queries), input_type="query", top_k=self.query_top_k, **asked)
        return [{"sparse": e.sparse, "dense": e.dense, "colbert": e.colbert} for e in embeddings]

    def search(self, queries: Sequence[str], k: int = 10) -> list[Ranking]:
        """The ``k`` best documents of each query, ``(id, score)`` best first."""
        queries = list(queries)
        if not queries or k <= 0:
            return [[] for _ in queries]
        encoded = self._encode_queries(queries)
        parts = [p for p in ENGINE_PARTS if p in self.weights]
        requests = []
        for part in parts:
            if part == "bm25":
                data = bm25_terms(queries)
            elif part == "sparse":
                data = [{int(i): float(v) for i, v in zip(q["sparse"].indices, q["sparse"].values)} for q in encoded]
            else:
                data = [np.asarray(q["dense"], np.float32).tolist() for q in encoded]
            requests.append(Request(part, data))
        colbert = "colbert" in self.weights
        depth = max(k, self.candidates) if colbert else k
        weights = [self.weights[p] for p in parts]
        found = self.engine.search(requests, limit=depth, fusion="rrf" if self.retriever == "colbert" else self.fusion,
                                   weights=weights, rrf_k=RRF_K, candidates=self.candidates)
        if not colbert:
            if self.fusion == "weighted" and len(parts) > 1:  # compute_score divides by the weights' sum
                total = sum(weights)
                found = [[(i, s / total) for i, s in row] for row in found]
            return [row[:k] for row in found]
        return self._with_colbert(encoded, found, k)

    def _with_colbert(self, encoded: list[dict[str, Any]], found: list[Ranking], k: int) -> list[Ranking]:
        texts = self.engine.texts(i for row in found for i, _ in row)
        ids = list(texts)
        docs = dict(zip(ids, self.client.encode([texts[i] for i in ids], return_dense=False, return_sparse=False,
                                                return_colbert_vecs=True, input_type="document"))) if ids else {}
        out = []
        for query, row in zip(encoded, found):
            row = [(i, s) for i, s in row if i in docs]
            if not row:
                out.append([])
                continue
            late = colbert_scores(query["colbert"], [docs[i].colbert for i, _ in row])
            if self.retriever == "colbert":
                fused = [(i, float(c)) for (i, _), c in zip(row, late)]
            elif self.fusion == "rrf":  # the engine's RRF continued with ColBERT's ranks of its candidates
                rank = {row[j][0]: r for r, j in enumerate(np.lexsort((np.arange(len(row)), -late)), 1)}
                fused = [(i, s + 1.0 / (RRF_K + rank[i])) for i, s in row]
            else:
                w = self.weights["colbert"]
                total = sum(self.weights.values())
                fused = [(i, (s + w * _normalised(float(c), "colbert")) / total) for (i, s), c in zip(row, late)]
            fused.sort(key=lambda item: -item[1])  # stable: ties keep the engine's order
            out.append(fused[:k])
        return out


@dataclass
class IndexReport:
    """What :func:`index_documents` did."""

    written: int = 0
    skipped: int = 0  # already in the collection, or a repeated id
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def index_documents(client: SpladeClient | BgeM3Client, engine: Engine, records: Iterable[tuple[str, str]], *,
                    kind: str, batch_size: int = 64, max_request_bytes: int = 1_048_576, write_rows: int = 1024,
                    doc_top_k: int | None = None, progress: Callable[[int], None] | None = None,
                    report: IndexReport | None = None) -> IndexReport:
    """Encode ``(id, text)`` records and write them into ``engine``'s collection, resumably.

    Ids the collection already holds are skipped before anything is encoded (one engine query
    per ``write_rows`` records), as are repeated ids; writes are upserts of ``write_rows``
    documents at a time, so an interrupted run leaves whole documents, and the same call again
    adds exactly the missing ones. ``progress(n)`` is called with each record read;
    ``report`` (updated as it goes) tells a caller interrupted by Ctrl-C what was written.
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

    chunks = batched(fresh(), batch_size, max_request_bytes, size=lambda r: len(r[1].encode("utf-8")))
    batches = ((chunk, [t for _, t in chunk]) for chunk in chunks)
    if kind == "bge_m3":
        results = client.encode_batches(batches, return_dense=True, return_sparse=True, input_type="document",
                                        top_k=doc_top_k)
    else:
        results = client.encode_batches(batches, top_k=doc_top_k)
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
