"""Atomic file writes: a crash never leaves a half-written file that a later command would load."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` on success, delete it on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield Path(tmp)
        fsync(tmp)  # the data reaches the disk before the rename makes it visible (power loss, node crash)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; rename it to ``path`` on success, delete it on failure.

    For write-once entries (the data cache) that several processes may build at the same moment: if
    another one has put ``path`` in place first, its complete folder is kept and this one is dropped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the mode a plain mkdir would
    try:
        yield tmp
        try:
            os.rename(tmp, path)  # atomic; refuses to replace a non-empty folder
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
