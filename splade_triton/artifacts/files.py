"""Writing a directory all at once: readers see the old one or the new one, never half of either."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["exchange", "file_sha256", "staged_directory"]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE): there is
    no moment where either name is missing, unlike two renames."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it replaces ``target``.

    The staging folder is on the same file system; an existing ``target`` is
    swapped with it in one atomic exchange (a reader of ``target`` never finds it
    missing), then the old tree is removed. On an exception nothing changes at
    ``target`` and the staging folder is removed. A ``target`` that is not a
    directory is refused, not replaced.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{target} exists and is not a directory; not replacing it")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.is_dir():
            exchange(staging, target)  # staging now holds the old tree, removed below
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (exports run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
