"""JSON-lines corpora in, JSON-lines vectors out (resumably), and BEIR-format datasets.

The vectors file is append-only and written in whole lines: each batch of
vectors goes out as one write followed by a flush, so a process that dies
leaves complete lines, plus at worst a part of the last one. Reading it back
for a resume drops such a partial last line (its texts are encoded again) and
collects the ids already done.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .formats import SparseVector, from_json, to_json
from .m3 import M3Embedding

__all__ = [
    "BeirDataset",
    "VectorsFile",
    "count_lines",
    "embedding_line",
    "id_key",
    "load_beir",
    "read_jsonl",
    "read_vectors",
    "record_text",
    "vector_line",
]


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line; a bad line is a ValueError naming it."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def count_lines(path: str | os.PathLike) -> int:
    """Number of non-blank lines (for a progress bar's total)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def id_key(value: Any, where: str = "") -> str:
    """An id as a set key: strings as they are, integers as their decimal (5 and "5" are one id)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}id must be a string or an integer, got {json.dumps(value)}")


def record_text(obj: dict[str, Any], fields: Sequence[str], where: str = "") -> str:
    """The text of a record: its ``fields`` joined by a space, empty or missing ones left out.

    BEIR corpora have ``title`` and ``text``; encoding both is the usual practice.
    """
    parts = []
    for name in fields:
        value = obj.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{where}field {name!r} must be a string, got {type(value).__name__}")
        if value:
            parts.append(value)
    if not any(name in obj for name in fields):
        raise ValueError(f"{where}no text field ({', '.join(map(repr, fields))})")
    return " ".join(parts)


def vector_line(id_value: Any, vector: SparseVector, fmt: str = "native") -> bytes:
    """One output line: ``{"id": ..., <the vector in form fmt>}`` and a newline, UTF-8."""
    return (json.dumps({"id": id_value, **to_json(vector, fmt)}, ensure_ascii=False, separators=(",", ":"))
            + "\n").encode("utf-8")


def embedding_line(id_value: Any, embedding: M3Embedding, fmt: str = "native") -> bytes:
    """One BGE-M3 output line: ``{"id": ..., "dense", "sparse", "colbert"}`` (native) or
    ``{"id": ..., "dense_vecs", "lexical_weights", "colbert_vecs"}`` (m3), the parts present."""
    if fmt not in ("native", "m3"):
        raise ValueError(f"a BGE-M3 embedding is written as native or m3, not {fmt!r}")
    body = embedding.to_native() if fmt == "native" else embedding.to_m3_json()
    return (json.dumps({"id": id_value, **body}, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


_ID_PREFIX = b'{"id":'
_decoder = json.JSONDecoder()


def _line_id(line: bytes) -> Any:
    # Every line starts with its id (vector_line writes it first): read just
    # that, not the whole vector, so resuming a large file stays quick.
    if line.startswith(_ID_PREFIX):
        try:
            return _decoder.raw_decode(line.decode("utf-8"), len(_ID_PREFIX))[0]
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    obj = json.loads(line)
    if not isinstance(obj, dict) or "id" not in obj:
        raise ValueError("no id")
    return obj["id"]


@dataclass
class VectorsFile:
    """An encode output file opened for appending, after a scan of what it holds.

    ``done``: id keys already in the file. ``dropped_bytes``: size of an
    incomplete last line removed by the scan (0 if none).
    """

    path: Path
    done: set[str] = field(default_factory=set)
    dropped_bytes: int = 0
    _file: BinaryIO | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> VectorsFile:
        """Scan ``path`` (if it exists), cut a partial last line, and open it for appending."""
        out = cls(Path(path))
        if out.path.exists():
            out._scan()
        out._file = open(out.path, "ab")
        return out

    def _scan(self) -> None:
        good_end = 0  # byte offset just past the last good line
        bad_line = 0  # number of the first line that is not a whole line of ours
        with open(self.path, "r+b") as f:
            for number, line in enumerate(f, 1):
                if bad_line:
                    # Only the last line may be torn: anything else is not our file.
                    raise ValueError(f"{self.path}:{bad_line}: not a line written by encode; "
                                     "refusing to append to this file")
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("incomplete line")
                    if line.strip():
                        self.done.add(id_key(_line_id(line)))
                except ValueError:
                    bad_line = number
                    continue
                good_end += len(line)
            size = f.seek(0, os.SEEK_END)
            if size > good_end:
                self.dropped_bytes = size - good_end
                f.truncate(good_end)

    def write(self, lines: Sequence[bytes]) -> None:
        """Append whole lines at once and flush them to the OS."""
        assert self._file is not None
        self._file.write(b"".join(lines))
        self._file.flush()

    def close(self) -> None:
        """Flush, fsync (the data reaches the disk, not only the page cache) and close."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __enter__(self) -> VectorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_vectors(path: str | os.PathLike) -> tuple[list[str], list[SparseVector]]:
    """Ids and vectors of an encode output file (any of its formats)."""
    ids, vectors = [], []
    for number, obj in read_jsonl(path):
        where = f"{path}:{number}: "
        if "id" not in obj:
            raise ValueError(f"{where}no id")
        ids.append(id_key(obj["id"], where))
        try:
            vectors.append(from_json(obj))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}{exc}") from None
    return ids, vectors


@dataclass
class BeirDataset:
    """A BEIR-format dataset: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

    corpus: dict[str, str]  # doc id -> title and text
    queries: dict[str, str]  # query id -> text, only the queries the qrels judge
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> relevance


def load_beir(directory: str | os.PathLike, split: str = "test") -> BeirDataset:
    """Read a BEIR folder. Documents are encoded as title + " " + text (BEIR's usual practice)."""
    root = Path(directory)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / name).is_file():
            raise ValueError(f"{root} is not a BEIR dataset: {name} is missing")
    corpus = {}
    for number, obj in read_jsonl(root / "corpus.jsonl"):
        where = f"{root / 'corpus.jsonl'}:{number}: "
        corpus[id_key(obj.get("_id"), where)] = record_text(obj, ("title", "text"), where)
    qrels: dict[str, dict[str, int]] = {}
    with open(root / "qrels" / f"{split}.tsv", encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        for number, row in enumerate(rows, 1):
            if not row or (number == 1 and row[0] == "query-id"):
                continue
            if len(row) != 3:
                raise ValueError(f"{root}/qrels/{split}.tsv:{number}: expected query-id, corpus-id, score")
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    queries = {}
    for number, obj in read_jsonl(root / "queries.jsonl"):
        qid = id_key(obj.get("_id"), f"{root / 'queries.jsonl'}:{number}: ")
        if qid in qrels:
            queries[qid] = record_text(obj, ("text",), f"{root / 'queries.jsonl'}:{number}: ")
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise ValueError(f"{root}: qrels judge queries missing from queries.jsonl: {', '.join(missing[:5])}")
    return BeirDataset(corpus, queries, qrels)
