"""Bench-only callback for bench_ddp.py: rank 0 times the training batches of each epoch (validation and
checkpoints excluded) and appends ``{"epoch", "seconds", "images"}`` lines to ``out``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L


class EpochTimer(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.start = self.end = 0.0
        self.images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("epoch_timer")
        self.start, self.images = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.images += len(batch[0]) * trainer.world_size  # equal shards: every process ran a batch this size
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            trainer.strategy.barrier("epoch_timer")
            self.end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            line = {"epoch": trainer.current_epoch, "seconds": self.end - self.start, "images": self.images}
            with self.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
