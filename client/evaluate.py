"""Retrieval quality on a BEIR-format dataset, measured by ir-measures.

Documents and queries are encoded by the server, each on its own side (``input_type``
``document`` and ``query``: an asymmetric model's query side differs). With a SPLADE pipeline the
documents go into a :class:`~client.scoring.SparseIndex` and each query
retrieves its top documents by sparse dot product. With a BGE-M3 pipeline every
query is scored against every document (brute force, numpy) by dense, sparse
(lexical), ColBERT or their weighted sum, with FlagEmbedding's formulas
(:mod:`client.m3`). ir-measures (pytrec_eval underneath) scores the run
against the qrels. No metric is computed here by hand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version

import ir_measures

import numpy as np

from .core import BgeM3Client, SpladeClient
from .corpus import BeirDataset
from .formats import SparseVector
from .m3 import DEFAULT_HYBRID_WEIGHTS, MODES, M3Embedding, hybrid_scores, parse_weights
from .scoring import SparseIndex

__all__ = ["DEFAULT_MEASURES", "SCORES", "Evaluation", "evaluate", "measure_run", "score_weights", "write_trec_run"]

# What a BGE-M3 run can rank by.
SCORES = (*MODES, "hybrid")

# Report name -> ir-measures measure. ir-measures calls MRR "RR" (the mean is the aggregate).
DEFAULT_MEASURES = {"nDCG@10": "nDCG@10", "MRR@10": "RR@10", "Recall@100": "R@100"}

Run = dict[str, dict[str, float]]  # query id -> doc id -> score


def measure_run(qrels: dict[str, dict[str, int]], run: Run,
                measures: dict[str, str] | None = None) -> dict[str, float]:
    """Mean of each measure over the judged queries, computed by ir-measures.

    A judged query the run has no document for counts as 0 (ir-measures would
    otherwise leave it out of the mean).
    """
    measures = measures or DEFAULT_MEASURES
    parsed = {name: ir_measures.parse_measure(spec) for name, spec in measures.items()}
    per_query: dict[str, dict[str, float]] = {name: {} for name in parsed}
    by_measure = {m: name for name, m in parsed.items()}
    for metric in ir_measures.iter_calc(list(parsed.values()), qrels, run):
        per_query[by_measure[metric.measure]][metric.query_id] = float(metric.value)
    judged = [q for q, docs in qrels.items() if any(rel > 0 for rel in docs.values())]
    return {name: (sum(per_query[name].get(q, 0.0) for q in judged) / len(judged) if judged else 0.0)
            for name in parsed}


@dataclass
class Evaluation:
    """What :func:`evaluate` measured, and on what."""

    dataset: str
    documents: int
    queries: int
    metrics: dict[str, float]
    run: Run = field(repr=False)
    seconds: float = 0.0
    library: str = f"ir-measures {version('ir-measures')}"

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "documents": self.documents, "queries": self.queries,
                "metrics": self.metrics, "library": self.library, "seconds": round(self.seconds, 3)}


def _encode(client: SpladeClient | BgeM3Client, texts: Sequence[str], side: str,
            progress: Callable[[int], None] | None, **kwargs) -> list:
    """The vectors of ``texts`` encoded on ``side``: ``query`` for queries, ``document`` for documents
    (an asymmetric model has its own encoder, activation and length for each; the server's
    default is ``document``)."""
    vectors = []
    for vector in client.iter_encode(texts, input_type=side, **kwargs):
        vectors.append(vector)
        if progress is not None:
            progress(1)
    return vectors


def score_weights(score: str, weights: str | Sequence[float] | None = None) -> tuple[float, float, float]:
    """[dense, sparse, colbert] weights of a ranking: one mode alone, or ``hybrid`` with ``weights``
    (default BGE-M3's 0.4, 0.2, 0.4)."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    if score != "hybrid":
        if weights is not None:
            raise ValueError(f"weights apply to the hybrid score, not to {score}")
        return tuple(1.0 if mode == score else 0.0 for mode in MODES)  # type: ignore[return-value]
    return parse_weights(weights) or DEFAULT_HYBRID_WEIGHTS


def evaluate(client: SpladeClient | BgeM3Client, dataset: BeirDataset, *, name: str = "", depth: int = 100,
             query_top_k: int | None = None, doc_top_k: int | None = None,
             measures: dict[str, str] | None = None,
             progress: Callable[[int], None] | None = None,
             score: str = "sparse", weights: str | Sequence[float] | None = None) -> Evaluation:
    """Encode ``dataset``, retrieve ``depth`` documents per query, and measure the run.

    ``score`` / ``weights``: with a :class:`BgeM3Client`, rank by ``dense``,
    ``sparse``, ``colbert`` or ``hybrid`` (weights [dense, sparse, colbert]); a
    SPLADE pipeline ranks by its sparse vectors only.
    """
    start = time.perf_counter()
    doc_ids = list(dataset.corpus)
    query_ids = list(dataset.queries)
    doc_texts = [dataset.corpus[d] for d in doc_ids]
    query_texts = [dataset.queries[q] for q in query_ids]
    run: Run = {}
    if isinstance(client, BgeM3Client):
        w = score_weights(score, weights)
        asked = dict(return_dense=w[0] > 0, return_sparse=w[1] > 0, return_colbert_vecs=w[2] > 0)
        docs: list[M3Embedding] = _encode(client, doc_texts, "document", progress, top_k=doc_top_k, **asked)
        queries: list[M3Embedding] = _encode(client, query_texts, "query", progress, top_k=query_top_k, **asked)
        matrix = hybrid_scores(queries, docs, w) if docs and queries else np.zeros((len(queries), len(docs)))
        for qid, row in zip(query_ids, matrix):
            order = np.lexsort((np.arange(row.size), -row))[:depth]  # best first, ties in corpus order
            run[qid] = {doc_ids[i]: float(row[i]) for i in order}
    else:
        if score != "sparse" or weights is not None:
            raise ValueError(f"a SPLADE pipeline ranks by sparse dot product only (score {score!r} asked)")
        doc_vectors: list[SparseVector] = _encode(client, doc_texts, "document", progress, top_k=doc_top_k)
        index = SparseIndex(doc_ids, doc_vectors)
        query_vectors: list[SparseVector] = _encode(client, query_texts, "query", progress, top_k=query_top_k)
        for qid, vector in zip(query_ids, query_vectors):
            run[qid] = {hit.id: hit.score for hit in index.search(vector, depth)}
    metrics = measure_run(dataset.qrels, run, measures)
    return Evaluation(name, len(doc_ids), len(query_ids), metrics, run, time.perf_counter() - start)


def write_trec_run(run: Run, path: str | os.PathLike, tag: str = "splade") -> None:
    """Write ``run`` in TREC format (``qid Q0 docid rank score tag``), best first."""
    with open(path, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda item: (-item[1], item[0]))
            for rank, (doc, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")
