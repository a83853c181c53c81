"""Stop at the first NaN / inf training loss or gradient, before it reaches the weights.

The loss is checked before the backward pass and the gradients before the optimizer step (a finite loss can
still give infinite gradients, and one Adam step with them turns every weight NaN). The step that went wrong
never updates the weights and no checkpoint holding it is written, so ``last.ckpt`` keeps the last good
state. Under DDP the verdict is OR-reduced over the ranks, so every rank raises at the same step (one rank
raising alone would leave the others waiting in the next all-reduce). The error goes through Lightning's
exception path, which marks the MLflow run FAILED.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.nn.utils import get_total_norm
from torch.optim import Optimizer

from src.errors import UserError


class NonFiniteLoss(UserError):
    """The training loss or its gradients became NaN or infinite."""


def _any_rank(trainer: L.Trainer, flag: bool) -> bool:
    return trainer.strategy.reduce_boolean_decision(flag, all=False) if trainer.world_size > 1 else flag


class NonFiniteGuard(L.Callback):
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if _any_rank(trainer, bad):
            self.stop(
                trainer, f"training loss is {loss.item()}" if bad else "another rank's loss is not finite"
            )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer
    ) -> None:
        # With fp16's GradScaler, inf gradients are expected: the scaler skips that step and lowers its scale.
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = get_total_norm(grads) if grads else None
        bad = norm is not None and not bool(torch.isfinite(norm))
        if _any_rank(trainer, bad):
            self.stop(
                trainer,
                f"the gradient norm is {norm.item()}"
                if bad
                else "another rank's gradient norm is not finite",
            )

    @staticmethod
    def stop(trainer: L.Trainer, what: str) -> None:
        saved = [
            c.best_model_path
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and c.monitor is None and c.best_model_path
        ]
        kept = f"{saved[0]} holds the last good state" if saved else "no checkpoint had been written yet"
        raise NonFiniteLoss(
            f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{trainer.fit_loop.epoch_loop.batch_idx}); stopped before that update, so {kept}. Lower "
            "optim.lr, keep trainer.gradient_clip_val set, or check the data for NaN / inf values."
        )
