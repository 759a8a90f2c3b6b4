"""The search engine behind ``index`` / ``search`` / ``evaluate --retriever``: Milvus.

One collection per corpus and pipeline holds, per document, its id, its text,
the text's BM25 vector, the pipeline's sparse vector (SPLADE weights or BGE-M3
lexical weights) and, for BGE-M3, its dense vector. Sparse fields have an
inverted index searched by inner product, BM25 by the engine's own BM25
function and metric (Lucene's BM25, k1 1.2, b 0.75), the dense field a FLAT
(exact) index.

BM25 runs wholly in the engine: its ``english`` analysis (standard tokenizer,
lowercase, English Snowball stemmer, English stop words) reads the stored text
when a document is written and the query text when it is searched.

The same code runs on Milvus Lite (``uri`` is a local file ending in ``.db``:
milvus-lite starts the native Milvus engine as a child process on a unix
socket, nothing to run) and on a Milvus server or cluster (``uri`` is
``http://host:19530``): the same engine code answers both (docs/retrieval.md).

A collection remembers which pipeline wrote it (in its schema's description): a
pipeline, kind or dense size that does not match is refused before any write.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpladeError
from .formats import SparseVector

__all__ = ["ANALYZER", "DEFAULT_ENGINE", "Engine", "EngineError", "Request", "rrf"]

DEFAULT_ENGINE = "build/index/milvus.db"
# The Triton tokenizer refuses texts over 65536 bytes; Milvus' VARCHAR holds at most 65535.
MAX_TEXT_BYTES = 65535
MAX_ID_BYTES = 512
# Milvus' built-in "english" analyzer spelt out, so that the collection records exactly what it runs.
ANALYZER = {"tokenizer": "standard",
            "filter": ["lowercase", {"type": "stemmer", "language": "english"},
                       {"type": "stop", "stop_words": ["_english_"]}]}
BM25_ANALYSIS = "milvus english: standard tokenizer, lowercase, english stemmer, _english_ stop words"
# Milvus' (and Lucene's) defaults, stated so that every engine scores alike.
BM25_K1, BM25_B = 1.2, 0.75
_PREFIX = "splade_triton."
_connections = itertools.count()
# milvus-lite starts the engine only for a file name of these characters, at most 36 of them.
_LITE_NAME = re.compile(r"[A-Za-z0-9._-]{1,33}\.db")
_LINE_BREAK = re.compile(r"[\n\r]")


class EngineError(SpladeError):
    """The search engine is unreachable, refused an operation, or holds another pipeline's collection."""


def _one_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())


def _record(description: str) -> dict[str, str]:
    """What :meth:`Engine._create` recorded in a collection's description ({} if nothing)."""
    try:
        record = json.loads(description)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _clip(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def _ids_filter(ids: Iterable[str]) -> str:
    """``id in [...]``, each id a properly escaped string literal of Milvus' expression grammar.

    Not pymilvus' ``ids=`` (it quotes ids unescaped: ``'``, ``"`` or ``\\`` in an id break the
    expression) nor filter templating (``filter_params``: milvus-lite 2.5.1's engine does not parse
    it). A line break cannot be written in the grammar at all: :meth:`Engine.write` refuses such ids.
    """
    literals = ('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in ids)
    return f"id in [{', '.join(literals)}]"


def _sparse(vector: SparseVector) -> dict[int, float]:
    return {int(i): float(v) for i, v in zip(vector.indices, vector.values)}


def rrf(rankings: Sequence[Sequence[tuple[str, float]]], k: int = 60) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of best-first rankings: each id scores the sum of 1 / (k + rank) over
    the rankings it is in (rank 1 the best), best first (ties: first seen first)."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, (i, _) in enumerate(ranking, 1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])


@dataclass(frozen=True)
class Request:
    """One engine retriever's part of a query: ``field`` (bm25, sparse, dense) and the query data
    (the query's text for bm25: the engine analyses it, ``{index: weight}`` for sparse, a list of
    floats for dense), one per query."""

    field: str
    data: list[Any]


METRICS = {"bm25": "BM25", "sparse": "IP", "dense": "IP"}


def _quiet_imports(local: bool) -> None:
    """Import pymilvus (and milvus_lite for a local file) without their noise on a command line's stderr."""
    with warnings.catch_warnings():
        # milvus_lite's __init__ imports pkg_resources (setuptools warns that it is deprecated) only to
        # read its own version: nothing a user of the command line can act on.
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        if local:
            import milvus_lite.server_manager  # noqa: F401
        import pymilvus  # noqa: F401
    # pymilvus logs every failed RPC with its traceback (its logging setup, applied at import, gives its
    # loggers their own handlers and levels): the caller reports a real failure once, as an EngineError.
    for name in ("pymilvus", "pymilvus.milvus_client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class Engine:
    """A Milvus collection of one pipeline's documents (see the module docstring).

    ``uri``: a local ``.db`` file (Milvus Lite) or ``http://host:port`` (a Milvus server).
    ``pipeline`` / ``kind``: the model name and ``splade`` or ``bge_m3``, recorded at creation
    and checked on every later open. ``timeout``: seconds per engine call, retries included;
    ``connect_timeout``: seconds to wait for the engine at open.
    """

    def __init__(self, uri: str, collection: str, *, pipeline: str, kind: str, recreate: bool = False,
                 timeout: float = 60.0, connect_timeout: float = 10.0):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", collection):
            raise EngineError(f"collection name {collection!r}: letters, digits and underscores only, "
                              "not starting with a digit")
        self.uri, self.collection, self.pipeline, self.kind = uri, collection, pipeline, kind
        self.timeout = timeout
        self.local = "://" not in uri
        self._started = False  # whether this engine started Milvus Lite's process (and stops it on close)
        _quiet_imports(self.local)
        from pymilvus import MilvusClient

        if self.local:
            self._prepare_local()
        try:
            # A connection of its own: pymilvus shares one per URI, which the first close() would end.
            self._client = MilvusClient(uri=uri, timeout=connect_timeout, alias=f"{_PREFIX}{next(_connections)}")
        except Exception as exc:  # pymilvus raises MilvusException, ConnectionConfigException and others
            self._release()
            verb = "start" if self.local else "reach"
            raise EngineError(f"cannot {verb} the search engine at {uri}: {_one_line(exc)}") from None
        try:
            self.dense_dim = self._check(recreate)
            if recreate and self.exists:
                self._call("drop_collection", self._client.drop_collection, self.collection)
                self.dense_dim = None
        except EngineError:
            self.close()  # a refused collection leaves nothing open (Lite: its process and file lock)
            raise

    def _prepare_local(self) -> None:
        """Check a Milvus Lite file before milvus-lite starts the engine on it (its own failures
        are a bare "Open local milvus failed")."""
        from milvus_lite.server_manager import server_manager_instance

        path = Path(self.uri).resolve()
        if not _LITE_NAME.fullmatch(path.name):
            raise EngineError(f"engine file {self.uri}: Milvus Lite needs a file name of letters, digits, '.', '_' "
                              f"or '-' ending in .db, 36 characters at most, e.g. {DEFAULT_ENGINE}")
        if path.is_dir():
            raise EngineError(f"engine file {self.uri} is a folder (an index written by milvus-lite 3.x?): "
                              "remove it and index again, or choose another --engine")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineError(f"cannot create the engine's folder {path.parent}: {exc.strerror}") from None
        # Already running for this process (another Engine, or pymilvus directly): share it, leave it running.
        self._started = str(path) not in getattr(server_manager_instance, "_servers", {})
        if not self._started:
            return
        # milvus-lite locks <folder>/.<name>.lock while its engine runs on the file. Probe it first: when
        # milvus-lite itself finds it taken, it deletes the lock file of the process holding it as it
        # gives up, which would let a third process in.
        lock = path.parent / f".{path.name}.lock"
        try:
            with open(lock, "a") as fd:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    self._started = False
                    raise EngineError(f"engine file {self.uri} is open in another process (Milvus Lite runs "
                                      "one process per file): wait for it to end, or choose another "
                                      "--engine") from None
                fcntl.lockf(fd, fcntl.LOCK_UN)
        except PermissionError as exc:
            self._started = False
            raise EngineError(f"cannot write in the engine's folder {path.parent}: {exc.strerror}") from None

    def _release(self) -> None:
        if self.local and self._started:
            # pymilvus' close() leaves Milvus Lite's process running, holding the file's lock until this
            # process exits: stop it, so that another process can open the file.
            from milvus_lite.server_manager import server_manager_instance

            self._started = False
            if str(Path(self.uri).resolve()) in getattr(server_manager_instance, "_servers", {}):
                server_manager_instance.release_server(self.uri)

    def _call(self, what: str, fn, *args, **kwargs):
        # pymilvus would retry a dead Lite process's socket for the whole timeout: look first.
        self._check_lite(what)
        try:
            # An int: pymilvus bounds its retries by the timeout only when it is one.
            return fn(*args, timeout=int(self.timeout), **kwargs)
        except Exception as exc:
            self._check_lite(what)
            raise EngineError(f"search engine at {self.uri}: {what} failed: {_one_line(exc)}") from None

    def _check_lite(self, what: str) -> None:
        ended = self._lite_ended()
        if ended is not None:
            raise EngineError(f"search engine at {self.uri}: {what} failed: Milvus Lite's engine process "
                              f"ended (exit status {ended}); run the command again")

    def _lite_ended(self) -> int | None:
        """The exit status of this file's Milvus Lite process if it has ended (None: running, or a server)."""
        if not self.local:
            return None
        from milvus_lite.server_manager import server_manager_instance

        server = getattr(server_manager_instance, "_servers", {}).get(str(Path(self.uri).resolve()))
        process = getattr(server, "_p", None)
        return None if process is None else process.poll()

    def _check(self, recreate: bool = False) -> int | None:
        """Refuse a collection another pipeline wrote; load it; its dense size (None: not yet created)."""
        if not self._call("has_collection", self._client.has_collection, self.collection):
            return None
        info = self._call("describe_collection", self._client.describe_collection, self.collection)
        props = _record(info.get("description", ""))
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
                              f"{props.get(_PREFIX + 'bm25_analysis')!r}, this client uses {BM25_ANALYSIS!r} "
                              "(an index written by an older client): --recreate it")
        self._call("load_collection", self._client.load_collection, self.collection)
        dims = [f["params"].get("dim") for f in info["fields"] if f["name"] == "dense"]
        return int(dims[0]) if dims else 0

    @property
    def exists(self) -> bool:
        return self.dense_dim is not None

    def _create(self, dense_dim: int) -> None:
        from pymilvus import DataType, Function, FunctionType

        c = self._client
        record = {_PREFIX + "pipeline": self.pipeline, _PREFIX + "kind": self.kind,
                  _PREFIX + "bm25_analysis": BM25_ANALYSIS}
        # In the schema's description: Milvus Lite keeps no collection properties (it drops them at
        # creation, and altering them is not implemented); a server keeps both.
        schema = c.create_schema(auto_id=False, description=json.dumps(record, sort_keys=True))
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, enable_analyzer=True,
                         analyzer_params=ANALYZER)
        schema.add_field("bm25", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25,
                                     input_field_names=["text"], output_field_names=["bm25"]))
        index = c.prepare_index_params()  # exact search: inverted lists scored in full, FLAT dense
        index.add_index("bm25", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                        params={"bm25_k1": BM25_K1, "bm25_b": BM25_B})
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        if dense_dim:
            schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dense_dim)
            index.add_index("dense", index_type="FLAT", metric_type="IP")
        self._call("create_collection", c.create_collection, self.collection, schema=schema, index_params=index)
        self.dense_dim = dense_dim

    # --- writing -----------------------------------------------------------------------------

    def present(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the collection already holds (what a resumed ``index`` skips)."""
        ids = [i for i in ids if not _LINE_BREAK.search(i)]  # never written (see write)
        if not self.exists or not ids:
            return set()
        found = self._call("query", self._client.query, self.collection, filter=_ids_filter(ids),
                           output_fields=["id"])
        return {row["id"] for row in found}

    def write(self, ids: Sequence[str], texts: Sequence[str], sparse: Sequence[SparseVector],
              dense: Sequence[np.ndarray] | None = None) -> None:
        """Upsert documents (an id written twice keeps one row). The first write creates the
        collection; a dense size unlike the collection's, or an id the engine cannot hold, is refused
        before anything is written."""
        dim = 0 if dense is None else int(np.asarray(dense[0]).size)
        if self.kind == "bge_m3" and dense is None:
            raise EngineError("a BGE-M3 collection needs each document's dense vector")
        if not self.exists:
            self._create(dim)
        elif dim != self.dense_dim:
            raise EngineError(f"collection {self.collection!r} at {self.uri} holds dense vectors of size "
                              f"{self.dense_dim}; this pipeline gives {dim}: another model under the same name? "
                              "choose another --collection, or --recreate it")
        rows = {}  # by id: the last of a repeated id wins
        for n, (i, text, vector) in enumerate(zip(ids, texts, sparse)):
            if len(i.encode("utf-8")) > MAX_ID_BYTES:
                raise EngineError(f"id {i[:40]!r}... is over {MAX_ID_BYTES} bytes, the engine's limit")
            if _LINE_BREAK.search(i):
                raise EngineError(f"id {i!r} holds a line break, which the engine's filter expressions cannot "
                                  "express")
            row = {"id": i, "text": _clip(text), "sparse": _sparse(vector)}
            if dim:
                row["dense"] = np.asarray(dense[n], dtype=np.float32).tolist()
            rows[i] = row
        # Insert what is new: Milvus Lite's upsert (and delete) fails on an id holding a quote.
        present = self.present(list(rows))
        new = [row for i, row in rows.items() if i not in present]
        if new:
            self._call("insert", self._client.insert, self.collection, new)
        if present:
            self._call("upsert", self._client.upsert, self.collection, [rows[i] for i in present])

    def flush(self) -> None:
        if self.exists:
            self._call("flush", self._client.flush, self.collection)

    def count(self) -> int:
        if not self.exists:
            return 0
        rows = self._call("count", self._client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # --- searching ---------------------------------------------------------------------------

    def search(self, requests: Sequence[Request], *, limit: int, rrf_k: int = 60,
               candidates: int | None = None) -> list[list[tuple[str, float]]]:
        """Per query, the ``limit`` best ``(id, score)`` pairs, best first.

        One request: that retriever's own scores. Several: one engine search each (its
        ``candidates`` best, default ``limit``), fused by reciprocal rank fusion (Milvus'
        ``RRFRanker(rrf_k)``: sum of 1 / (rrf_k + rank)) here, not by the engine's
        ``hybrid_search``: Milvus Lite's re-queries its hits by an unescaped id filter, which an id
        holding a quote breaks (or crashes the engine). Weighted fusion is the client's too
        (:mod:`client.retrieval`): Milvus Lite's ``WeightedRanker`` always normalises and
        normalises BM25 as if it were a distance.
        """
        if not self.exists:
            raise EngineError(f"collection {self.collection!r} at {self.uri} does not exist: "
                              "run python -m client index first")
        if not requests:
            return []
        if any(r.field == "dense" for r in requests) and not self.dense_dim:
            raise EngineError(f"collection {self.collection!r} holds no dense vectors (a SPLADE pipeline's)")
        nq = len(requests[0].data)
        if len(requests) == 1:
            return self._search(requests[0], limit, nq)
        lists = [self._search(r, max(limit, candidates or 0), nq) for r in requests]
        return [rrf([found[q] for found in lists], rrf_k)[:limit] for q in range(nq)]

    def _search(self, request: Request, limit: int, nq: int) -> list[list[tuple[str, float]]]:
        found = self._call("search", self._client.search, self.collection, data=request.data,
                           anns_field=request.field, limit=limit,
                           search_params={"metric_type": METRICS[request.field]}, output_fields=["id"])
        out = [[(hit["id"], float(hit["distance"])) for hit in row] for row in found]
        return out + [[] for _ in range(nq - len(out))]

    def texts(self, ids: Iterable[str]) -> dict[str, str]:
        """The stored text of each id (ColBERT re-scoring re-encodes its candidates from them)."""
        ids = [i for i in dict.fromkeys(ids) if not _LINE_BREAK.search(i)]  # never written (see write)
        if not ids:
            return {}
        rows = self._call("query", self._client.query, self.collection, filter=_ids_filter(ids),
                          output_fields=["id", "text"])
        return {row["id"]: row["text"] for row in rows}

    def size_on_disk(self) -> int | None:
        """Bytes of a Milvus Lite file and its SQLite companions (None for a server)."""
        if not self.local:
            return None
        path = Path(self.uri)
        return sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.is_file())

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a client whose engine went away: nothing left to release
            pass
        self._release()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
