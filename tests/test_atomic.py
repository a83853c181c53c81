"""A failed write leaves the previous file intact and no temp file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from src.atomic import atomic_directory, atomic_write


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_successful_write_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_directory_renames_keeps_a_rival_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "entry"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.npy").write_text("half")
        raise RuntimeError("crash mid-build")
    assert list((tmp_path / "cache").iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("first")
    umask = os.umask(0)
    os.umask(umask)
    assert (target / "a").read_text() == "first" and target.stat().st_mode & 0o777 == 0o777 & ~umask
    with atomic_directory(target) as tmp:  # a second builder finishing later keeps the first entry
        (tmp / "a").write_text("second")
    assert (target / "a").read_text() == "first" and len(list(target.parent.iterdir())) == 1
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError), atomic_directory(blocker) as tmp:
        (tmp / "a").write_text("x")
