"""Checkpoint files: written atomically beside their target, read back without running pickled code.

Lightning's own writer serialises into memory, writes a temp file in the system temp dir and moves it over the
target. When that temp dir is another filesystem (tmpfs ``/tmp``, outputs on NFS or Lustre: the usual cluster
set-up) the move is a copy, so a kill during it leaves a half-written ``last.ckpt``; nothing is fsync'ed
either. :class:`AtomicCheckpointIO` writes the temp file in the target's directory, fsyncs it and renames.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from src.atomic import atomic_write
from src.errors import UserError
from src.lean_checkpoint import restore_frozen


class AtomicCheckpointIO(TorchCheckpointIO):
    """``trainer.plugins`` entry (conf/trainer/default.yaml); remote URLs keep Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete temp files a killed process left behind (never read by anything, but as big as a checkpoint)."""
    leftovers = sorted(Path(directory).glob(".*.tmp")) if Path(directory).is_dir() else []
    for path in leftovers:
        path.unlink()
    return leftovers


def read_checkpoint(path: str | Path, module: nn.Module | None = None) -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True``; with ``module``, check that it fits it.

    Refuses pickles that would run code, truncated files and checkpoints of another model with a
    :class:`UserError` instead of a traceback from inside Lightning. A lean checkpoint
    (:mod:`src.lean_checkpoint`) is completed from ``module``'s frozen weights once their checksum matches.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"checkpoint {path} cannot be loaded safely ({type(err).__name__}: {reason[:200]}). Only "
            "checkpoints written by medpeft (plain tensors, loaded with weights_only=True) are accepted; a "
            "truncated or foreign file is refused."
        ) from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds no Lightning state_dict; it is not a training checkpoint.")
    if module is not None:
        restore_frozen(module, ckpt, f"checkpoint {path}", getattr(module, "backbone_config", None))
        own = module.state_dict()
        wrong = sorted(
            {k for k in own if k not in state}
            | {k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)}
        )
        if wrong:
            raise UserError(
                f"checkpoint {path} does not fit this model: {len(wrong)} tensors are missing, extra or "
                f"shaped differently (e.g. {', '.join(wrong[:3])}). It comes from a run with another backbone, "
                "strategy, rank or class count than this config."
            )
    return ckpt
