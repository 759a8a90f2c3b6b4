"""BGE-M3's three representations of a text, their output forms, and FlagEmbedding's scores.

A ``bge_m3`` pipeline answers, per text, what was asked of it:

- ``dense``: the L2-normalised ``<s>`` vector, float32 ``[hidden]``;
- ``sparse``: the lexical weights, a :class:`~client.formats.SparseVector` (token ids, heaviest first);
- ``colbert``: one L2-normalised vector per token after ``<s>``, float32 ``[T, hidden]`` (padding removed).

Scores, with the semantics of FlagEmbedding's ``BGEM3FlagModel``:

- dense: the dot product of the two dense vectors;
- sparse (lexical): the sum of ``w_q * w_p`` over shared token ids (``compute_lexical_matching_score``);
- colbert: for each query vector the largest dot product with a passage vector, averaged over the
  query's vectors (``colbert_score``);
- hybrid: their weighted sum divided by the sum of the weights (``compute_score``'s
  ``colbert+sparse+dense`` with ``weights_for_different_modes`` = [dense, sparse, colbert]; its
  ``sparse+dense`` uses the first two weights alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .formats import SparseVector, _floats
from .scoring import compute_lexical_matching_score, score_matrix

__all__ = [
    "MODES",
    "M3Embedding",
    "colbert_score",
    "colbert_scores",
    "dense_score",
    "hybrid_scores",
    "parse_weights",
    "score_pairs",
    "to_flagembedding",
]

# The three representations, in the order of FlagEmbedding's weights_for_different_modes.
MODES = ("dense", "sparse", "colbert")
# BGE-M3's published weights for hybrid retrieval (dense, sparse, colbert).
DEFAULT_HYBRID_WEIGHTS = (0.4, 0.2, 0.4)


@dataclass(frozen=True, eq=False)
class M3Embedding:
    """One text's BGE-M3 representations; those not asked for are None."""

    dense: np.ndarray | None = None  # float32 [hidden]
    sparse: SparseVector | None = None
    colbert: np.ndarray | None = None  # float32 [T, hidden]

    def __post_init__(self) -> None:
        if self.dense is not None:
            object.__setattr__(self, "dense", np.asarray(self.dense, dtype=np.float32).reshape(-1))
        if self.colbert is not None:
            colbert = np.asarray(self.colbert, dtype=np.float32)
            if colbert.ndim != 2:
                raise ValueError(f"colbert vectors must be [T, hidden], got shape {colbert.shape}")
            object.__setattr__(self, "colbert", colbert)

    def __repr__(self) -> str:
        parts = []
        if self.dense is not None:
            parts.append(f"dense=[{self.dense.shape[0]}]")
        if self.sparse is not None:
            parts.append(f"sparse={self.sparse!r}")
        if self.colbert is not None:
            parts.append(f"colbert=[{self.colbert.shape[0]}, {self.colbert.shape[1]}]")
        return f"M3Embedding({', '.join(parts)})"

    @property
    def lexical_weights(self) -> dict[str, float] | None:
        """FlagEmbedding's ``{"<token id>": weight}`` form of the sparse part."""
        return None if self.sparse is None else self.sparse.to_lexical_weights()

    def to_native(self) -> dict[str, Any]:
        """``{"dense": [...], "sparse": {"indices", "values"[, "tokens"]}, "colbert": [[...], ...]}``,
        only the parts present; weights as the shortest decimals that read back as the same float32."""
        out: dict[str, Any] = {}
        if self.dense is not None:
            out["dense"] = _floats(self.dense)
        if self.sparse is not None:
            out["sparse"] = self.sparse.to_native()
        if self.colbert is not None:
            out["colbert"] = [_floats(row) for row in self.colbert]
        return out

    def to_m3_json(self) -> dict[str, Any]:
        """FlagEmbedding's keys for one text: ``dense_vecs`` (a vector), ``lexical_weights``,
        ``colbert_vecs`` (a list of vectors); only the parts present."""
        out: dict[str, Any] = {}
        if self.dense is not None:
            out["dense_vecs"] = _floats(self.dense)
        if self.sparse is not None:
            out["lexical_weights"] = self.sparse.to_lexical_weights()
        if self.colbert is not None:
            out["colbert_vecs"] = [_floats(row) for row in self.colbert]
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> M3Embedding:
        """Inverse of :meth:`to_native` and :meth:`to_m3_json` (told apart by their keys)."""
        dense = obj.get("dense", obj.get("dense_vecs"))
        colbert = obj.get("colbert", obj.get("colbert_vecs"))
        sparse = None
        if "sparse" in obj:
            sparse = SparseVector.from_native(obj["sparse"])
        elif "lexical_weights" in obj:
            sparse = SparseVector.from_lexical_weights(obj["lexical_weights"])
        if colbert is not None:
            colbert = np.asarray(colbert, dtype=np.float32).reshape(len(colbert), -1)
        return cls(None if dense is None else np.asarray(dense, dtype=np.float32), sparse, colbert)


def to_flagembedding(embeddings: M3Embedding | Sequence[M3Embedding]) -> dict[str, Any]:
    """What FlagEmbedding's ``BGEM3FlagModel.encode`` returns for these texts.

    ``{"dense_vecs": float32 [N, hidden], "lexical_weights": [{"<token id>": w}, ...],
    "colbert_vecs": [float32 [T_i, hidden], ...]}``, None for a part not asked for; for a single
    :class:`M3Embedding` (FlagEmbedding given one string) a vector, a dict and one array.
    """
    if isinstance(embeddings, M3Embedding):
        e = embeddings
        return {"dense_vecs": e.dense, "lexical_weights": e.lexical_weights, "colbert_vecs": e.colbert}
    embeddings = list(embeddings)

    def present(part: str) -> bool:
        have = [getattr(e, part) is not None for e in embeddings]
        if any(have) and not all(have):
            raise ValueError(f"some embeddings have {part} and some do not")
        return bool(embeddings) and all(have)

    dense = np.stack([e.dense for e in embeddings]) if present("dense") else None
    lexical = [e.lexical_weights for e in embeddings] if present("sparse") else None
    colbert = [e.colbert for e in embeddings] if present("colbert") else None
    return {"dense_vecs": dense, "lexical_weights": lexical, "colbert_vecs": colbert}


# --- scores ------------------------------------------------------------------------------


def dense_score(query: np.ndarray, passage: np.ndarray) -> float:
    """Dot product of two dense vectors (FlagEmbedding: ``q_dense @ p_dense``)."""
    return float(np.dot(np.asarray(query, np.float64), np.asarray(passage, np.float64)))


def colbert_score(query: np.ndarray, passage: np.ndarray) -> float:
    """FlagEmbedding's ``colbert_score``: for each query vector the largest dot product with a
    passage vector, summed and divided by the number of query vectors."""
    q = np.asarray(query, np.float64)
    p = np.asarray(passage, np.float64)
    if q.shape[0] == 0:
        raise ValueError("a query without colbert vectors has no colbert score")
    if p.shape[0] == 0:
        raise ValueError("a passage without colbert vectors has no colbert score")
    return float((q @ p.T).max(axis=1).sum() / q.shape[0])


def colbert_scores(query: np.ndarray, passages: Sequence[np.ndarray]) -> np.ndarray:
    """:func:`colbert_score` of one query against many passages, in one matrix product."""
    if not passages:
        return np.zeros(0)
    q = np.asarray(query, np.float64)
    lengths = np.array([len(p) for p in passages])
    if q.shape[0] == 0 or (lengths == 0).any():
        raise ValueError("a text without colbert vectors has no colbert score")
    all_vectors = np.concatenate([np.asarray(p, np.float64) for p in passages])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    best = np.maximum.reduceat(q @ all_vectors.T, starts, axis=1)  # [Tq, passages]
    return best.sum(axis=0) / q.shape[0]


def parse_weights(weights: str | Sequence[float] | None) -> tuple[float, float, float] | None:
    """``"0.4,0.2,0.4"`` or three numbers (dense, sparse, colbert) -> a tuple; None stays None."""
    if weights is None:
        return None
    if isinstance(weights, str):
        try:
            weights = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ValueError(f"weights are three numbers for dense, sparse, colbert, e.g. 0.4,0.2,0.4; "
                             f"got {weights!r}") from None
    values = tuple(float(w) for w in weights)
    if len(values) != 3:
        raise ValueError(f"weights are three numbers for dense, sparse, colbert; got {len(values)}")
    if any(not np.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0; got {values}")
    return values  # type: ignore[return-value]


def score_pairs(queries: Sequence[M3Embedding], passages: Sequence[M3Embedding],
                weights_for_different_modes: Sequence[float] | None = None) -> dict[str, list[float]]:
    """FlagEmbedding's ``compute_score`` result for (query, passage) pairs already encoded.

    Keys ``dense``, ``sparse``, ``colbert``, ``sparse+dense`` (weighted by the first two weights)
    and ``colbert+sparse+dense`` (weighted by all three), each a list of one score per pair; a
    score needing a representation the embeddings lack is left out, and so is ``sparse+dense``
    when dense and sparse both weigh 0 (FlagEmbedding answers NaN). Weights: [dense, sparse,
    colbert], default [1, 1, 1] as in FlagEmbedding.
    """
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries for {len(passages)} passages")
    w = parse_weights(weights_for_different_modes) or (1.0, 1.0, 1.0)
    pairs = list(zip(queries, passages))
    out: dict[str, list[float]] = {}
    if pairs and all(q.colbert is not None and p.colbert is not None for q, p in pairs):
        out["colbert"] = [colbert_score(q.colbert, p.colbert) for q, p in pairs]
    if pairs and all(q.sparse is not None and p.sparse is not None for q, p in pairs):
        out["sparse"] = [float(compute_lexical_matching_score(q.lexical_weights, p.lexical_weights))
                         for q, p in pairs]
    if pairs and all(q.dense is not None and p.dense is not None for q, p in pairs):
        out["dense"] = [dense_score(q.dense, p.dense) for q, p in pairs]
    if "sparse" in out and "dense" in out:
        if w[0] + w[1] > 0:  # both weighted 0 (colbert alone): nothing to divide by (FlagEmbedding: NaN)
            out["sparse+dense"] = [(s * w[1] + d * w[0]) / (w[1] + w[0]) for s, d in zip(out["sparse"], out["dense"])]
        if "colbert" in out:
            out["colbert+sparse+dense"] = [(c * w[2] + s * w[1] + d * w[0]) / sum(w)
                                           for c, s, d in zip(out["colbert"], out["sparse"], out["dense"])]
    return out


def hybrid_scores(queries: Sequence[M3Embedding], documents: Sequence[M3Embedding],
                  weights: Sequence[float] | str = DEFAULT_HYBRID_WEIGHTS) -> np.ndarray:
    """``[len(queries), len(documents)]`` scores of every query against every document (float64).

    ``(w_dense * dense + w_sparse * sparse + w_colbert * colbert) / sum(w)``, FlagEmbedding's
    ``colbert+sparse+dense``; a mode with weight 0 is not computed (its representation may be
    absent). A single mode is its weights with the others 0, e.g. ``(0, 1, 0)``: the plain
    lexical score.
    """
    w = parse_weights(weights)
    assert w is not None
    total = np.zeros((len(queries), len(documents)))
    for mode, weight in zip(MODES, w):
        if weight == 0:
            continue
        missing = [e for e in (*queries, *documents) if getattr(e, mode) is None]
        if missing:
            raise ValueError(f"{mode} is weighted {weight:g} but {len(missing)} embeddings have no {mode} part")
        if mode == "dense":
            scores = (np.stack([q.dense for q in queries]).astype(np.float64)
                      @ np.stack([d.dense for d in documents]).astype(np.float64).T) if queries and documents else 0
        elif mode == "sparse":
            scores = score_matrix([q.sparse for q in queries], [d.sparse for d in documents])
        else:
            doc_vectors = [d.colbert for d in documents]
            scores = np.array([colbert_scores(q.colbert, doc_vectors) for q in queries]).reshape(total.shape)
        total += weight * scores
    return total / sum(w)
