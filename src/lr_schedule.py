"""The learning-rate curve: linear warm-up, then half-cosine to ``min_lr``, over the run's optimizer steps.

The number of steps is only known once Lightning has built the training loader for this process (world
size, batch size, accumulation, limits), so the factor is a callable object whose length is set at
``on_train_start``. ``LambdaLR`` saves such an object's attributes with the scheduler, so a resumed run gets
its length back. Resuming with another ``trainer.max_epochs`` (extending a run) stretches the cosine to
the new end: from the resumed step on, the lr is the one a run of the new length has there (a finished run,
which ended at ``min_lr``, goes back up to that point of the longer curve and decays again). The warm-up
keeps its length. The change is logged (a warning with both lrs, and ``train/schedule_steps``).
"""

from __future__ import annotations

import logging
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from src.errors import UserError
from src.optim import warmup_steps

log = logging.getLogger(__name__)


class WarmupCosine:
    """``factor(step)`` of the base lr; every param group follows it relative to its own lr (layer decay)."""

    def __init__(
        self, floor: float, warmup_fraction: float = 0.0, warmup_epochs: float | None = None
    ) -> None:
        self.floor, self.warmup_fraction, self.warmup_epochs = floor, warmup_fraction, warmup_epochs
        self.total: int | None = None
        self.warmup = 0
        self.restart: tuple[int, float] | None = (
            None  # (step, factor) where an extended run's cosine restarts
        )

    def __call__(self, step: int) -> float:
        if self.total is None:  # before on_train_start: no optimizer step is taken yet
            return 0.0
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def set_length(self, total: int, max_epochs: int | None, step: int) -> bool:
        """Fix the schedule at ``total`` steps; True when a resumed run's length changed (extended)."""
        total = max(int(total), 1)
        if self.total is None:
            self.total = total
            self.warmup = min(
                warmup_steps(total, max_epochs, self.warmup_fraction, self.warmup_epochs), max(total - 1, 0)
            )
            return False
        if total == self.total:
            return False
        if total <= step:
            raise UserError(
                f"resume: the run is at step {step}, but this config ends it after {total} steps; "
                "raise trainer.max_epochs (or trainer.max_steps) above what it has trained, or start a new run."
            )
        old_total, before = self.total, self(step)
        self.total = total
        log.warning(
            "resume with a new length: the lr schedule had %d steps, now %d; at step %d the lr factor goes from "
            "%.4g to %.4g (the cosine stretched to the new end)",
            old_total,
            total,
            step,
            before,
            self(step),
        )
        return True


def warmup_cosine_scheduler(
    optimizer: Optimizer, min_lr: float, warmup_fraction: float = 0.0, warmup_epochs: float | None = None
) -> LambdaLR:
    base = optimizer.defaults["lr"]
    floor = min(min_lr / base, 1.0) if base > 0 else 0.0
    return LambdaLR(optimizer, WarmupCosine(floor, warmup_fraction, warmup_epochs))


def start_schedule(scheduler: LambdaLR, total: int, max_epochs: int | None) -> bool:
    """Set the length of a :func:`warmup_cosine_scheduler` and the groups' lr for the current step."""
    (factor,) = {id(f): f for f in scheduler.lr_lambdas}.values()
    changed = factor.set_length(total, max_epochs, scheduler.last_epoch)
    lrs = [
        base * fn(scheduler.last_epoch)
        for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
    return changed
