"""Stop at the first NaN / inf training loss, before it reaches the weights.

The check runs before the backward pass, so the step that produced the bad loss never updates the weights and
no checkpoint holding it is written; ``last.ckpt`` keeps the last good state. The error goes through
Lightning's exception path, which marks the MLflow run FAILED.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from src.callbacks.last_checkpoint import LastCheckpoint
from src.errors import UserError


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(L.Callback):
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        loop = trainer.fit_loop.epoch_loop
        saved = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint) and c.saved_step is not None]
        kept = (
            f"{saved[0].path} (step {saved[0].saved_step}) holds the last good state"
            if saved
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLoss(
            f"training loss is {loss.item()} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {loop.batch_idx}); stopped before that update, so {kept}. Lower optim.lr, keep "
            "trainer.gradient_clip_val set, or check the data for NaN / inf values."
        )
