"""A test-only callback: what each DDP process trained and tested, written to files the test reads."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class Probe(L.Callback):
    """``<dir>/rank<r>_sparse.pt``: the sparse positions each process trains; ``rank<r>_test.pt``: the
    (scores, target) the module kept after testing."""

    def __init__(self, dir: str) -> None:
        self.dir = Path(dir)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        delta = getattr(pl_module.model, "sparse_delta", None)
        if delta is not None:
            torch.save(delta.indices.cpu().clone(), self.dir / f"rank{trainer.global_rank}_sparse.pt")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save(pl_module.test_predictions, self.dir / f"rank{trainer.global_rank}_test.pt")
