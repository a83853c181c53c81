"""A failed or killed write leaves the previous file intact: outputs and checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import torch

from src.atomic import atomic_directory, atomic_write
from src.checkpoint_io import AtomicCheckpointIO, read_checkpoint, remove_partial_writes
from src.config import PROJECT_ROOT
from src.train import build_trainer


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


def test_checkpoint_killed_mid_write_leaves_the_previous_one_loadable(tmp_path: Path) -> None:
    # A real SIGKILL while the checkpoint bytes are half written: the old last.ckpt must survive intact
    # and nothing that looks like a checkpoint may be left for a later resume or eval to pick up.
    last = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 4}, last)
    script = f"""
import os, signal, torch
from src.checkpoint_io import AtomicCheckpointIO
real_save = torch.save
def save_half_then_die(obj, path):
    real_save(obj, path)
    os.truncate(path, os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_half_then_die
AtomicCheckpointIO().save_checkpoint({{"state_dict": {{"w": torch.zeros(10**6)}}, "global_step": 6}}, {str(last)!r})
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert read_checkpoint(last)["global_step"] == 4
    assert [p.name for p in last.parent.glob("*.ckpt")] == ["last.ckpt"]
    assert remove_partial_writes(last.parent) and [p.name for p in last.parent.iterdir()] == ["last.ckpt"]


def test_trainer_writes_checkpoints_through_the_atomic_writer(make_cfg) -> None:
    cfg = make_cfg()
    assert isinstance(build_trainer(cfg).strategy.checkpoint_io, AtomicCheckpointIO)


def test_remote_checkpoint_paths_keep_lightnings_writer() -> None:
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, "memory://ckpt/last.ckpt")
    with fsspec.open("memory://ckpt/last.ckpt", "rb") as f:
        assert torch.equal(torch.load(f, weights_only=True)["w"], torch.ones(2))
