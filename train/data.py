"""Training data: JSONL lines ``{"query": str, "pos": [str, ...], "neg": [str, ...]}``.

The format of FlagEmbedding and sentence-transformers. ``neg`` is optional.
Optional teacher scores for distillation: ``pos_scores`` / ``neg_scores``,
one number per text of ``pos`` / ``neg``. Every line is checked before any
training starts; a bad one is a :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field

__all__ = ["DataError", "Example", "read_examples", "to_rows"]


class DataError(ValueError):
    """A training file that cannot be used, with the line that says why."""


@dataclass
class Example:
    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    line: int = 0


def _texts(obj: dict, key: str, where: str, required: bool) -> list[str]:
    if key not in obj:
        if required:
            raise DataError(f"{where}: no {key!r} (a list of texts)")
        return []
    value = obj[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise DataError(f"{where}: {key!r} must be a list of strings, got {json.dumps(value)[:80]}")
    if any(not t.strip() for t in value):
        raise DataError(f"{where}: {key!r} holds an empty text")
    if required and not value:
        raise DataError(f"{where}: {key!r} is empty; each query needs at least one positive text")
    return value


def _scores(obj: dict, key: str, texts: list[str], text_key: str, where: str) -> list[float] | None:
    if key not in obj:
        return None
    value = obj[key]
    if (not isinstance(value, list) or len(value) != len(texts)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in value)):
        raise DataError(f"{where}: {key!r} must be {len(texts)} finite number(s), one per text of {text_key!r}")
    return [float(s) for s in value]


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Every example of ``path``, checked; blank lines are skipped."""
    examples = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: {e.strerror}") from None
    with f:
        for number, raw in enumerate(f, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 ({e.reason} at byte {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            unknown = sorted(set(obj) - {"query", "pos", "neg", "pos_scores", "neg_scores", "id", "prompt"})
            if unknown:
                raise DataError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                                "expected query, pos, neg, pos_scores, neg_scores")
            query = obj.get("query")
            if not isinstance(query, str) or not query.strip():
                raise DataError(f"{where}: 'query' must be a non-empty string")
            pos = _texts(obj, "pos", where, True)
            neg = _texts(obj, "neg", where, False)
            examples.append(Example(query, pos, neg, _scores(obj, "pos_scores", pos, "pos", where),
                                    _scores(obj, "neg_scores", neg, "neg", where), number))
    if not examples:
        raise DataError(f"{path}: no examples")
    teacher = [e.pos_scores is not None for e in examples]
    if any(teacher) and not all(teacher):
        missing = next(e.line for e in examples if e.pos_scores is None)
        raise DataError(f"{path}:{missing}: no 'pos_scores' while other lines have teacher scores: all or none")
    return examples


def to_rows(examples: list[Example], negatives: int, seed: int = 12) -> tuple[dict[str, list], int, bool]:
    """Columns for the trainer: ``query``, ``positive``, ``negative_1..n`` (and ``label`` with teacher
    scores), one row per positive text.

    Every row needs the same number of negatives: ``n`` is ``negatives`` capped by the most any
    example has (0 when none has any; in-batch negatives still apply). An example with fewer
    draws its own again (as FlagEmbedding does), one with none takes other examples' negatives
    (never its own positives); all draws are seeded. Teacher scores are used when every example
    has them for ``n`` negatives of its own (the label: the positive's score, then the negatives').
    Returns ``(columns, n, distill)``.
    """
    n = min([negatives, max(len(e.neg) for e in examples)])
    distill = (n > 0 and all(e.pos_scores is not None and e.neg_scores is not None and len(e.neg) >= n
                             for e in examples))
    rng = random.Random(seed)
    pool = [t for e in examples for t in e.neg]
    columns: dict[str, list] = {"query": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(n)}}
    if distill:
        columns["label"] = []
    for e in examples:
        for p, pos in enumerate(e.pos):
            if len(e.neg) >= n:
                picked = rng.sample(range(len(e.neg)), n)
                texts = [e.neg[j] for j in picked]
            elif e.neg:
                texts = [e.neg[j] for j in rng.sample(range(len(e.neg)), len(e.neg))]
                texts += [rng.choice(e.neg) for _ in range(n - len(texts))]
            else:
                others = [t for t in pool if t not in e.pos] or pool
                texts = [rng.choice(others) for _ in range(n)]
            columns["query"].append(e.query)
            columns["positive"].append(pos)
            for i, text in enumerate(texts):
                columns[f"negative_{i + 1}"].append(text)
            if distill:
                columns["label"].append([e.pos_scores[p]] + [e.neg_scores[j] for j in picked])
    return columns, n, distill
