"""Sparse vectors and the forms other tools expect them in.

- native: ``{"indices": [...], "values": [...], "tokens": [...]}``, by weight descending
  (the ``splade`` model's own outputs, padding removed);
- TEI: text-embeddings-inference's ``/embed_sparse`` answer, ``[{"index": i, "value": v}, ...]``
  per text, by index ascending as TEI emits it;
- M3: FlagEmbedding BGE-M3's ``lexical_weights``, ``{"<token id>": weight}`` per text;
- CSR: one ``scipy.sparse.csr_matrix`` row per text.

Weights are float32 on the wire. As Python floats they are the shortest decimal
that reads back as the same float32 (``2.79``, not ``2.7899999618530273``), so
JSON written from them is compact and parses back bit-exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

__all__ = [
    "FORMATS",
    "SparseVector",
    "from_json",
    "to_csr",
    "to_json",
    "to_lexical_weights",
    "to_native",
    "to_tei",
]

# Output forms by name, as the command line spells them.
FORMATS = ("native", "tei", "m3")


def _floats(values: np.ndarray) -> list[float]:
    # numpy prints a float32 as its shortest round-tripping decimal.
    return [float(s) for s in np.asarray(values, dtype=np.float32).astype(str)]


@dataclass(frozen=True, eq=False)
class SparseVector:
    """One text's SPLADE vector: vocabulary ids and their weights, heaviest first.

    ``tokens`` holds the vocabulary string of each index when the server was
    asked for them (``return_tokens=True``), else None.
    """

    indices: np.ndarray  # int32 [nnz]
    values: np.ndarray  # float32 [nnz]
    tokens: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices, dtype=np.int32).reshape(-1)
        values = np.asarray(self.values, dtype=np.float32).reshape(-1)
        if indices.shape != values.shape:
            raise ValueError(f"indices and values differ in length: {indices.size} != {values.size}")
        if self.tokens is not None and len(self.tokens) != indices.size:
            raise ValueError(f"tokens and indices differ in length: {len(self.tokens)} != {indices.size}")
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "values", values)
        if self.tokens is not None:
            object.__setattr__(self, "tokens", tuple(self.tokens))

    @classmethod
    def from_pairs(cls, pairs: Mapping[int, float] | Iterable[tuple[int, float]],
                   tokens: Mapping[int, str] | None = None) -> SparseVector:
        """Build from ``{index: weight}`` (or pairs), dropping zeros and sorting heaviest first."""
        items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
        indices = np.array([int(i) for i, _ in items], dtype=np.int32)
        values = np.array([float(v) for _, v in items], dtype=np.float32)
        keep = values != 0
        indices, values = indices[keep], values[keep]
        # Heaviest first, ties by index: the same order whatever order the pairs came in.
        order = np.lexsort((indices, -values))
        indices, values = indices[order], values[order]
        toks = tuple(tokens[int(i)] for i in indices) if tokens is not None else None
        return cls(indices, values, toks)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseVector):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # mutable arrays inside

    def __repr__(self) -> str:
        top = self.top(5)
        more = ", ..." if len(self) > 5 else ""
        return f"SparseVector(nnz={len(self)}, top=[{', '.join(f'{t!r}: {w:.3g}' for t, w in top)}{more}])"

    def top(self, n: int | None = None) -> list[tuple[str | int, float]]:
        """The ``n`` heaviest terms as ``(token or index, weight)``."""
        n = len(self) if n is None else n
        names = self.tokens if self.tokens is not None else self.indices.tolist()
        return list(zip(names[:n], _floats(self.values[:n])))

    def to_dict(self) -> dict[int, float]:
        """``{index: weight}``."""
        return dict(zip(self.indices.tolist(), _floats(self.values)))

    def to_native(self) -> dict[str, list]:
        """``{"indices": [...], "values": [...]}`` plus ``"tokens"`` when known; heaviest first."""
        out: dict[str, list] = {"indices": self.indices.tolist(), "values": _floats(self.values)}
        if self.tokens is not None:
            out["tokens"] = list(self.tokens)
        return out

    def to_tei(self) -> list[dict[str, int | float]]:
        """text-embeddings-inference ``/embed_sparse`` form: ``[{"index": i, "value": v}, ...]``, index ascending."""
        order = np.argsort(self.indices, kind="stable")
        return [{"index": i, "value": v}
                for i, v in zip(self.indices[order].tolist(), _floats(self.values[order]))]

    def to_lexical_weights(self) -> dict[str, float]:
        """BGE-M3 ``lexical_weights`` form: ``{"<token id>": weight}``."""
        return {str(i): v for i, v in zip(self.indices.tolist(), _floats(self.values))}

    @classmethod
    def from_native(cls, data: Mapping[str, Any]) -> SparseVector:
        """Inverse of :meth:`to_native`."""
        tokens = data.get("tokens")
        pairs = zip(data["indices"], data["values"])
        return cls.from_pairs(pairs, dict(zip(data["indices"], tokens)) if tokens is not None else None)

    @classmethod
    def from_tei(cls, data: Iterable[Mapping[str, Any]]) -> SparseVector:
        """Inverse of :meth:`to_tei`."""
        return cls.from_pairs((d["index"], d["value"]) for d in data)

    @classmethod
    def from_lexical_weights(cls, data: Mapping[str, float]) -> SparseVector:
        """Inverse of :meth:`to_lexical_weights`."""
        return cls.from_pairs((int(k), v) for k, v in data.items())

    def dot(self, other: SparseVector) -> float:
        """Sparse dot product (SPLADE's relevance score)."""
        common, i, j = np.intersect1d(self.indices, other.indices, assume_unique=True, return_indices=True)
        if not common.size:
            return 0.0
        return float(np.dot(self.values[i].astype(np.float64), other.values[j].astype(np.float64)))


def to_native(vectors: Iterable[SparseVector]) -> list[dict[str, list]]:
    """Each vector as ``{"indices", "values"[, "tokens"]}``."""
    return [v.to_native() for v in vectors]


def to_tei(vectors: Iterable[SparseVector]) -> list[list[dict[str, int | float]]]:
    """The body text-embeddings-inference's ``/embed_sparse`` would answer for these texts."""
    return [v.to_tei() for v in vectors]


def to_lexical_weights(vectors: Iterable[SparseVector]) -> list[dict[str, float]]:
    """FlagEmbedding BGE-M3's ``output["lexical_weights"]`` for these texts."""
    return [v.to_lexical_weights() for v in vectors]


def to_csr(vectors: Sequence[SparseVector], vocab_size: int) -> scipy.sparse.csr_matrix:
    """A ``[len(vectors), vocab_size]`` float32 CSR matrix, one row per vector (column indices sorted)."""
    indptr = np.zeros(len(vectors) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(v) for v in vectors])
    indices = np.concatenate([v.indices for v in vectors]) if vectors else np.zeros(0, np.int32)
    data = np.concatenate([v.values for v in vectors]) if vectors else np.zeros(0, np.float32)
    if indices.size and (indices.min() < 0 or indices.max() >= vocab_size):
        raise ValueError(f"a vector has an index outside [0, {vocab_size})")
    matrix = scipy.sparse.csr_matrix((data, indices, indptr), shape=(len(vectors), vocab_size))
    matrix.sort_indices()
    return matrix


# JSON keys of each form in one object per text (the command line's JSON lines).
_JSON_KEYS = {"native": "indices", "tei": "embed_sparse", "m3": "lexical_weights"}


def to_json(vector: SparseVector, fmt: str = "native") -> dict[str, Any]:
    """The vector as the JSON object of one line of ``encode``'s output, in form ``fmt``."""
    if fmt == "native":
        return vector.to_native()
    if fmt == "tei":
        return {"embed_sparse": vector.to_tei()}
    if fmt == "m3":
        return {"lexical_weights": vector.to_lexical_weights()}
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def from_json(obj: Mapping[str, Any]) -> SparseVector:
    """Read a vector back from any form :func:`to_json` writes (told apart by their keys)."""
    if "indices" in obj:
        return SparseVector.from_native(obj)
    if "embed_sparse" in obj:
        return SparseVector.from_tei(obj["embed_sparse"])
    if "lexical_weights" in obj:
        return SparseVector.from_lexical_weights(obj["lexical_weights"])
    if isinstance(obj.get("sparse"), Mapping):  # a BGE-M3 line in native form: {"dense", "sparse", "colbert"}
        return SparseVector.from_native(obj["sparse"])
    raise ValueError(f"no sparse vector in this object (expected one of {', '.join(sorted(_JSON_KEYS.values()))})")
