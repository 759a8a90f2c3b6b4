"""Bulk encoding of ``(id, text)`` records (``python -m client encode`` / ``index``).

Requests stay within the server's limits: texts per request, bytes per request and, for
``overflow`` ``chunk``, windows per request (``max_windows``: the encoder rows one request may
make). A record the server still refuses (a text over ``max_text_bytes``, over ``max_windows`` on
its own, ...) is found by splitting its request, reported with its id and left out (or ends the
run, ``on_error="stop"``); every other record is encoded once, in order.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from .core import batched
from .errors import InvalidRequestError

__all__ = ["MAX_WINDOWS", "ON_ERROR", "RecordRefused", "encode_records", "request_batches", "windows_bound"]

T = TypeVar("T")

# The tokenizer step's max_windows default (the encoder's max_batch_size).
MAX_WINDOWS = 512
# Tokens of a window besides [CLS] and [SEP] at the default max_length (512), chunk_overlap 0.
WINDOW_TOKENS = 510
ON_ERROR = ("skip", "stop")
_SPACE = re.compile(r"\s+")


class RecordRefused(InvalidRequestError):
    """The server refused one record's text (``on_error="stop"``); ``record`` is its tag."""

    def __init__(self, record: Any, error: InvalidRequestError, name: str):
        super().__init__(f"{name} was refused by the server: {error}", status=error.status, url=error.url)
        self.record = record


def windows_bound(text: str) -> int:
    """The most windows ``overflow`` ``chunk`` can make of ``text`` at the default max_length and
    chunk_overlap: a WordPiece token holds at least one character that is not a space. (A pipeline
    with shorter windows may make more: a request it refuses for that is split, see
    :func:`encode_records`.)"""
    return max(1, -(-len(_SPACE.sub("", text)) // WINDOW_TOKENS))


def request_batches(records: Iterable[T], text: Callable[[T], str], *, batch_size: int, max_request_bytes: int,
                    max_windows: int | None = None) -> Iterator[list[T]]:
    """Consecutive ``records`` cut into requests: at most ``batch_size`` texts, ``max_request_bytes``
    UTF-8 bytes and (``max_windows`` given: chunk mode) :func:`windows_bound` windows together."""
    requests = batched(records, batch_size, max_request_bytes, size=lambda r: len(text(r).encode("utf-8")))
    if max_windows is None:
        return requests
    return (part for request in requests
            for part in batched(request, batch_size, max_windows, size=lambda r: windows_bound(text(r))))


def encode_records(encode_batches: Callable[..., Iterator[tuple[Any, list]]],
                   batches: Iterable[tuple[Sequence[T], Sequence[str]]], *, on_error: str = "skip",
                   refused: Callable[[T, InvalidRequestError], None] | None = None,
                   name: Callable[[T], str] = repr, **options: Any) -> Iterator[tuple[list[T], list]]:
    """``(tags, results)`` for each ``(tags, texts)`` batch (one tag per text), in order, by a client's
    ``encode_batches(batches, **options)``.

    A request the server refuses (INVALID_ARG) is split in halves and sent again, down to the text
    at fault: ``refused(tag, error)`` is told and the text left out (``on_error="skip"``), or
    :class:`RecordRefused` is raised after every record before it (``"stop"``). A refusal of the
    settings themselves (an empty text refused alike: a bad ``top_k``, ...) is raised as it is.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    source = iter(batches)
    queue: deque = deque()  # sent again before more is read: halves of a refused request, cancelled ones
    settings_ok = False

    def feed(sent: deque) -> Iterator[tuple[Sequence[T], Sequence[str]]]:
        while queue or (batch := next(source, None)) is not None:
            batch = queue.popleft() if queue else batch
            sent.append(batch)
            yield batch

    while True:
        sent: deque = deque()  # sent and not yet answered, oldest first (answers come in order)
        try:
            for _, results in encode_batches(feed(sent), **options):
                tags, _ = sent.popleft()
                yield list(tags), results
            return
        except InvalidRequestError as exc:
            tags, texts = sent.popleft()  # the oldest unanswered request is the one refused
            retry = []
            if len(texts) > 1:
                half = len(texts) // 2
                retry = [(tags[:half], texts[:half]), (tags[half:], texts[half:])]
            else:
                if not settings_ok:
                    try:
                        list(encode_batches([(None, [""])], **options))
                    except InvalidRequestError:
                        raise exc from None
                    settings_ok = True
                if on_error == "stop":
                    raise RecordRefused(tags[0], exc, name(tags[0])) from None
                if refused is not None:
                    refused(tags[0], exc)
            queue.extendleft(reversed([*retry, *sent]))
