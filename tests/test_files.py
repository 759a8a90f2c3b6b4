"""splade_triton.artifacts.files: a directory replaced all at once, for readers too."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from splade_triton.artifacts.files import staged_directory


def _watch(marker: str, stop, missing) -> None:
    """Stat ``marker`` as fast as possible until ``stop``; count the times it was not there."""
    seen = 0
    while not stop.is_set():
        try:
            os.stat(marker)
        except FileNotFoundError:
            seen += 1
    missing.value = seen


def test_a_reader_never_finds_the_directory_missing_while_it_is_replaced(tmp_path):
    target = tmp_path / "model_repository"
    with staged_directory(target) as staging:
        (staging / "marker").write_text("0")
    context = multiprocessing.get_context("spawn")
    stop, missing = context.Event(), context.Value("i", 0)
    reader = context.Process(target=_watch, args=(str(target / "marker"), stop, missing))
    reader.start()
    try:
        for generation in range(1, 301):
            with staged_directory(target) as staging:
                (staging / "marker").write_text(str(generation))
    finally:
        stop.set()
        reader.join(30)
    assert (target / "marker").read_text() == "300"
    assert missing.value == 0, f"a reader found no directory {missing.value} times during 300 replacements"
    assert [p.name for p in tmp_path.iterdir()] == ["model_repository"]  # no staging or old folders left


def test_a_failure_leaves_the_old_directory_and_no_staging(tmp_path):
    target = tmp_path / "out"
    with staged_directory(target) as staging:
        (staging / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_directory(target) as staging:
            (staging / "a").write_text("new")
            raise RuntimeError("half-way")
    assert (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_file_in_the_way_is_not_replaced_by_a_directory(tmp_path):
    target = tmp_path / "out"
    target.write_text("a user's file")
    with pytest.raises(OSError):
        with staged_directory(target) as staging:
            (staging / "a").write_text("new")
    assert target.read_text() == "a user's file"
