"""A test-only callback that SIGKILLs its own process at a given step, once (a marker file remembers)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class KillAtStep(L.Callback):
    """``kill -9`` in the middle of an epoch, deterministically: at the start of batch ``step`` (global step),
    unless ``marker`` exists, which it creates first, so the resumed run with the same command goes on."""

    def __init__(self, step: int, marker: str, sig: str = "SIGKILL", group: bool = False) -> None:
        self.step, self.marker, self.sig = step, Path(marker), signal.Signals[sig]
        self.group = group  # the whole process group (every DDP process), as a scheduler kills a job

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.touch()
            if self.group:
                os.killpg(os.getpgid(0), self.sig)
            os.kill(os.getpid(), self.sig)
