"""``checkpoints/last.ckpt``: the state ``resume=true`` continues from, written often and on preemption.

Written every ``every_n_train_steps`` optimizer steps, at the end of every epoch (after its validation), and
at the end of the batch in which the process got SIGTERM (the preemption signal of SLURM and Kubernetes). Lightning only notes SIGTERM
and stops at the end of that batch without saving anything; here the batch ends with a checkpoint first.

Besides the model, optimizer, scheduler, loop counters and the train loader's position (see
:mod:`src.data.resumable`), the checkpoint carries the torch / CUDA / numpy / Python RNG states, which Lightning
does not save, so that dropout and augmentation draws continue as in an uninterrupted run.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # Tensors and plain tuples only, so the checkpoint loads with torch.load(weights_only=True).
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


class LastCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt`` resumable (a ``Checkpoint``, so it runs after the best-model callback and
    records that callback's up-to-date state)."""

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 50) -> None:
        self.path = Path(dirpath) / self.FILENAME
        self.every_n_train_steps = every_n_train_steps
        self.saved_step: int | None = None  # global step of the last write, for the non-finite loss guard
        self._rng: dict[str, Any] | None = None

    def _skip(self, trainer: L.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step
        log.debug("wrote %s at step %d", self.path, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._skip(trainer):
            return
        if trainer.received_sigterm:
            self.save(trainer)
            log.warning(
                "SIGTERM: wrote %s at step %d; resume with resume=true", self.path, trainer.global_step
            )
            return
        n = self.every_n_train_steps
        # The epoch's last batch is saved at the epoch's end instead, so a resume never skips a validation.
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if n and trainer.global_step % n == 0 and not last:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning calls Checkpoint callbacks' epoch-end hooks last, in list order: the best-model callback
        # has already taken this epoch's val/auroc into account, so last.ckpt carries its current state.
        if not self._skip(trainer):
            self.save(trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        done = trainer is None or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        loader = trainer.train_dataloader if trainer is not None else None
        return {
            "rng": rng_state(),
            "mid_epoch": not done,
            "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # An end-of-epoch state is restored at once: the next epoch's loader iterator is created (and draws its
        # seeds) right after. A mid-epoch state waits for on_train_start, after Lightning re-created the
        # iterator of the interrupted epoch, which the uninterrupted run created before the checkpoint.
        if state.get("mid_epoch"):
            self._rng = state["rng"]
        else:
            set_rng_state(state["rng"])
        self._loader = state.get("loader")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores a stateful train loader only if it was not built before the checkpoint was
        # loaded, but the LR schedule's trainer.estimated_stepping_batches builds it earlier: restore it here,
        # before its first batch (ResumableLoader iterates lazily).
        loader = trainer.train_dataloader
        if getattr(self, "_loader", None) is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(self._loader)
        self._loader = None
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None
