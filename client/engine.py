"""The search engine behind ``index`` / ``search`` / ``evaluate --retriever``: Milvus.

One collection per corpus and pipeline holds, per document, its id, its text,
its BM25 terms and their BM25 vector, the pipeline's sparse vector (SPLADE
weights or BGE-M3 lexical weights) and, for BGE-M3, its dense vector. Sparse
fields have an inverted index searched by inner product, BM25 by the engine's
own BM25 function and metric (k1 1.5, b 0.75 by default), the dense field a
FLAT (exact) index.

The BM25 terms are analysed here, by bm25s's tokenizer with English stop words
and the Snowball stemmer (PyStemmer), the project's BM25 baseline elsewhere, and
stored space-separated; the engine only splits them again at the spaces. So BM25
is the same on Milvus Lite, whose analyzer has no stemmer, and on a server.

The same code runs on Milvus Lite (``uri`` is a local path ending in ``.db``:
the data in a folder, nothing to run) and on a Milvus server or cluster (``uri``
is ``http://host:19530``). Milvus Lite 3.x runs in this process and speaks
Milvus' API, but it is a Python re-implementation (faiss, pyarrow), not the
Milvus engine: the server is (docs/retrieval.md).

A collection remembers which pipeline wrote it (collection properties): a
pipeline, kind or dense size that does not match is refused before any write.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpladeError
from .formats import SparseVector

__all__ = ["DEFAULT_ENGINE", "Engine", "EngineError", "Request"]

DEFAULT_ENGINE = "build/index/milvus.db"
# The Triton tokenizer refuses texts over 65536 bytes; Milvus' VARCHAR holds at most 65535.
MAX_TEXT_BYTES = 65535
MAX_ID_BYTES = 512
# The engine splits the pre-analysed terms again and does nothing else to them.
ANALYZER = {"tokenizer": "standard"}
BM25_ANALYSIS = "bm25s en stop words, Snowball english stemmer"
_PREFIX = "splade_triton."
_stemmer = None


def bm25_terms(texts: Sequence[str]) -> list[str]:
    """Each text's BM25 terms, space-separated: bm25s's tokenizer (words of 2+ characters,
    lowercased), English stop words removed, Snowball-stemmed."""
    global _stemmer
    import bm25s

    if _stemmer is None:
        import Stemmer

        _stemmer = Stemmer.Stemmer("english")
    tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer, return_ids=False, show_progress=False)
    return [" ".join(t) for t in tokens]


class EngineError(SpladeError):
    """The search engine is unreachable, refused an operation, or holds another pipeline's collection."""


def _one_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())


def _clip(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def _sparse(vector: SparseVector) -> dict[int, float]:
    return {int(i): float(v) for i, v in zip(vector.indices, vector.values)}


@dataclass(frozen=True)
class Request:
    """One engine retriever's part of a query: ``field`` (bm25, sparse, dense) and the query data
    (the query's :func:`bm25_terms` for bm25, ``{index: weight}`` for sparse, a list of floats
    for dense), one per query."""

    field: str
    data: list[Any]


METRICS = {"bm25": "BM25", "sparse": "IP", "dense": "IP"}


class Engine:
    """A Milvus collection of one pipeline's documents (see the module docstring).

    ``uri``: a local ``.db`` file (Milvus Lite) or ``http://host:port`` (a Milvus server).
    ``pipeline`` / ``kind``: the model name and ``splade`` or ``bge_m3``, recorded at creation
    and checked on every later open.
    """

    def __init__(self, uri: str, collection: str, *, pipeline: str, kind: str, recreate: bool = False,
                 timeout: float = 60.0):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", collection):
            raise EngineError(f"collection name {collection!r}: letters, digits and underscores only, "
                              "not starting with a digit")
        self.uri, self.collection, self.pipeline, self.kind = uri, collection, pipeline, kind
        self.timeout = timeout
        # pymilvus logs every failed RPC with its traceback, and Milvus Lite's in-process gRPC server
        # logs optional RPCs it lacks (AllocTimestamp) that pymilvus then does without: the caller
        # reports a real failure once, as an EngineError.
        for name in ("pymilvus", "grpc._server", "milvus_lite"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        from pymilvus import MilvusClient

        if "://" not in uri:
            parent = Path(uri).resolve().parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EngineError(f"cannot create the engine's folder {parent}: {exc.strerror}") from None
        try:
            # Milvus Lite's in-process gRPC server answers pymilvus' 10 s keepalive pings with GOAWAY
            # "too_many_pings" (logged by gRPC); nothing sits between them to keep alive.
            local = {} if "://" in uri else {"grpc_options": {"grpc.keepalive_time_ms": 2**31 - 1}}
            self._client = MilvusClient(uri=uri, timeout=timeout, **local)
        except Exception as exc:  # pymilvus raises MilvusException and others (bad URI, lock held)
            hint = "" if "://" in uri else (" (is the folder writable, and not open in another process? Milvus "
                                            "Lite opens a data folder in one process at a time)")
            raise EngineError(f"cannot reach the search engine at {uri}: {_one_line(exc)}{hint}") from None
        try:
            self.dense_dim = self._check(recreate)
            if recreate and self.exists:
                self._call("drop_collection", self._client.drop_collection, self.collection)
                self.dense_dim = None
        except EngineError:
            self.close()  # a refused collection leaves nothing open (Lite: its folder's lock)
            raise

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise EngineError(f"search engine at {self.uri}: {what} failed: {_one_line(exc)}") from None

    def _check(self, recreate: bool = False) -> int | None:
        """Refuse a collection another pipeline wrote; load it; its dense size (None: not yet created)."""
        if not self._call("has_collection", self._client.has_collection, self.collection):
            return None
        info = self._call("describe_collection", self._client.describe_collection, self.collection)
        props = info.get("properties", {})
        theirs = (props.get(_PREFIX + "pipeline"), props.get(_PREFIX + "kind"))
        if theirs == (None, None):
            raise EngineError(f"collection {self.collection!r} at {self.uri} was not written by this client "
                              "(no pipeline recorded); choose another --collection")
        if theirs != (self.pipeline, self.kind) and not recreate:
            raise EngineError(f"collection {self.collection!r} at {self.uri} holds vectors of pipeline "
                              f"{theirs[0]!r} ({theirs[1]}); this run uses {self.pipeline!r} ({self.kind}): "
                              "choose another --collection, or --recreate it")
        if props.get(_PREFIX + "bm25_analysis") != BM25_ANALYSIS and not recreate:
            raise EngineError(f"collection {self.collection!r} at {self.uri} was analysed for BM25 by "
                              f"{props.get(_PREFIX + 'bm25_analysis')!r}, this client uses {BM25_ANALYSIS!r}: "
                              "--recreate it")
        self._call("load_collection", self._client.load_collection, self.collection)
        dims = [f["params"].get("dim") for f in info["fields"] if f["name"] == "dense"]
        return int(dims[0]) if dims else 0

    @property
    def exists(self) -> bool:
        return self.dense_dim is not None

    def _create(self, dense_dim: int) -> None:
        from pymilvus import DataType, Function, FunctionType

        c = self._client
        schema = c.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("terms", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, enable_analyzer=True,
                         analyzer_params=ANALYZER)
        schema.add_field("bm25", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="terms_bm25", function_type=FunctionType.BM25,
                                     input_field_names=["terms"], output_field_names=["bm25"]))
        index = c.prepare_index_params()  # exact search: inverted lists scored in full, FLAT dense
        index.add_index("bm25", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        if dense_dim:
            schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dense_dim)
            index.add_index("dense", index_type="FLAT", metric_type="IP")
        props = {_PREFIX + "pipeline": self.pipeline, _PREFIX + "kind": self.kind,
                 _PREFIX + "bm25_analysis": BM25_ANALYSIS}
        self._call("create_collection", c.create_collection, self.collection, schema=schema, index_params=index,
                   properties=props)
        self.dense_dim = dense_dim

    # --- writing -----------------------------------------------------------------------------

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the collection already holds (what a resumed ``index`` skips)."""
        if not self.exists or not ids:
            return set()
        found = self._call("query", self._client.query, self.collection, ids=list(ids), output_fields=["id"])
        return {row["id"] for row in found}

    def write(self, ids: Sequence[str], texts: Sequence[str], sparse: Sequence[SparseVector],
              dense: Sequence[np.ndarray] | None = None) -> None:
        """Upsert documents (an id written twice keeps one row). The first write creates the
        collection; a dense size unlike the collection's is refused before anything is written."""
        dim = 0 if dense is None else int(np.asarray(dense[0]).size)
        if self.kind == "bge_m3" and dense is None:
            raise EngineError("a BGE-M3 collection needs each document's dense vector")
        if not self.exists:
            self._create(dim)
        elif dim != self.dense_dim:
            raise EngineError(f"collection {self.collection!r} at {self.uri} holds dense vectors of size "
                              f"{self.dense_dim}; this pipeline gives {dim}: another model under the same name? "
                              "choose another --collection, or --recreate it")
        rows = []
        for n, (i, text, terms, vector) in enumerate(zip(ids, texts, bm25_terms(texts), sparse)):
            if len(i.encode("utf-8")) > MAX_ID_BYTES:
                raise EngineError(f"id {i[:40]!r}... is over {MAX_ID_BYTES} bytes, the engine's limit")
            row = {"id": i, "text": _clip(text), "terms": _clip(terms), "sparse": _sparse(vector)}
            if dim:
                row["dense"] = np.asarray(dense[n], dtype=np.float32).tolist()
            rows.append(row)
        self._call("upsert", self._client.upsert, self.collection, rows)

    def flush(self) -> None:
        if self.exists:
            self._call("flush", self._client.flush, self.collection)

    def count(self) -> int:
        if not self.exists:
            return 0
        rows = self._call("count", self._client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # --- searching ---------------------------------------------------------------------------

    def search(self, requests: Sequence[Request], *, limit: int, fusion: str = "rrf",
               weights: Sequence[float] | None = None, rrf_k: int = 60, normalize: bool = False,
               candidates: int | None = None) -> list[list[tuple[str, float]]]:
        """Per query, the ``limit`` best ``(id, score)`` pairs, best first.

        One request: that retriever's own scores. Several: fused inside the engine
        (``hybrid_search``) by ``rrf`` (``RRFRanker(rrf_k)``: sum of 1 / (rrf_k + rank)) or
        ``weighted`` (``WeightedRanker(*weights)``: sum of weight x score; ``normalize``: Milvus'
        normalisation first, 0.5 + arctan(s) / pi for inner products, 2 arctan(s) / pi for BM25),
        each retriever contributing its ``candidates`` best (default ``limit``).
        """
        if not self.exists:
            raise EngineError(f"collection {self.collection!r} at {self.uri} does not exist: "
                              "run python -m client index first")
        if not requests:
            return []
        if any(r.field == "dense" for r in requests) and not self.dense_dim:
            raise EngineError(f"collection {self.collection!r} holds no dense vectors (a SPLADE pipeline's)")
        from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

        nq = len(requests[0].data)
        if len(requests) == 1:
            r = requests[0]
            found = self._call("search", self._client.search, self.collection, data=r.data, anns_field=r.field,
                               limit=limit, search_params={"metric_type": METRICS[r.field]}, output_fields=["id"])
        else:
            ranker = RRFRanker(rrf_k) if fusion == "rrf" else WeightedRanker(*weights, norm_score=normalize)
            reqs = [AnnSearchRequest(data=r.data, anns_field=r.field, param={"metric_type": METRICS[r.field]},
                                     limit=max(limit, candidates or 0)) for r in requests]
            found = self._call("hybrid_search", self._client.hybrid_search, self.collection, reqs, ranker,
                               limit=limit, output_fields=["id"])
        single_bm25 = len(requests) == 1 and requests[0].field == "bm25"
        # Milvus Lite reports a plain BM25 search's scores negated (its distances); BM25 is >= 0.
        out = [[(hit["id"], abs(hit["distance"]) if single_bm25 else float(hit["distance"])) for hit in row]
               for row in found]
        return out + [[] for _ in range(nq - len(out))]

    def texts(self, ids: Iterable[str]) -> dict[str, str]:
        """The stored text of each id (ColBERT re-scoring re-encodes its candidates from them)."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        rows = self._call("get", self._client.get, self.collection, ids=ids, output_fields=["text"])
        return {row["id"]: row["text"] for row in rows}

    def size_on_disk(self) -> int | None:
        """Bytes of a Milvus Lite file (None for a server)."""
        if "://" in self.uri:
            return None
        total = 0
        for root, _, files in os.walk(self.uri):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total if os.path.isdir(self.uri) else os.path.getsize(self.uri)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a client whose server went away: nothing left to release
            pass
        if "://" not in self.uri:
            # pymilvus leaves Milvus Lite's in-process server running, holding the data folder's
            # lock until the process exits: stop it, so that another process can open the file.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
