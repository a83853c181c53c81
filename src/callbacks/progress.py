"""Training progress a person can read: Lightning's rich bar on a terminal, one line per epoch in a file.

Rich redraws its bar in place; with stdout redirected (nohup, SLURM) it writes only its last frame, so a
30-minute run showed nothing between the model summary and the end. Off a terminal this callback turns
the bar off and logs, after each validation (once per epoch with the default ``check_val_every_n_epoch``;
at every ``val_check_interval`` of a stream that has no epochs), one line with the mean training loss
and the time since the previous line::

    epoch 3/10  step 120  train/loss 0.4121  val/auroc 0.9342  val/acc 0.8750 ...  12.3 s  ETA 1 min 26 s

On a terminal the bar stays, without Lightning's ``v_num`` (the MLflow run id's tail, meaningless there).
A subclass of :class:`RichProgressBar` rather than a second callback, because Lightning allows one progress
bar and uses ours instead of its default.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def eta_seconds(trainer: L.Trainer, elapsed: float, epochs_done: int) -> float | None:
    """Time left at the pace so far: by epochs (``max_epochs``) or by steps (``max_steps``), whichever
    ends training first; None when neither bounds it."""
    guesses = []
    if trainer.max_epochs is not None and trainer.max_epochs > 0 and epochs_done > 0:
        guesses.append((trainer.max_epochs - epochs_done) * elapsed / epochs_done)
    if trainer.max_steps > 0 and trainer.global_step > 0:
        guesses.append((trainer.max_steps - trainer.global_step) * elapsed / trainer.global_step)
    return max(min(guesses), 0.0) if guesses else None


class ProgressLog(RichProgressBar):
    """Rich bar on a TTY (no ``v_num``); elsewhere one log line per validation / epoch.

    ``tty``: force one mode (tests); None asks ``sys.stdout.isatty()``.
    """

    def __init__(self, tty: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tty = sys.stdout.isatty() if tty is None else tty
        self._fit_start = self._epoch_start = 0.0
        self._loss_sum: torch.Tensor | float = 0.0
        self._batches = 0
        self._logged_epoch = -1

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.tty:
            self.disable()
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._fit_start = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._epoch_start = time.monotonic()
        self._loss_sum, self._batches = 0.0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum = self._loss_sum + loss.detach().float()  # stays on the device: no sync per step
            self._batches += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._log_line(trainer, done=trainer.current_epoch + (1 if self._epoch_finished(trainer) else 0))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._logged_epoch != trainer.current_epoch:  # no validation this epoch: log the training side
            self._log_line(trainer, done=trainer.current_epoch + 1)

    @staticmethod
    def _epoch_finished(trainer: L.Trainer) -> bool:
        loop = trainer.fit_loop.epoch_loop
        return loop.batch_progress.is_last_batch or loop.done

    def _log_line(self, trainer: L.Trainer, done: int) -> None:
        self._logged_epoch = trainer.current_epoch
        if self.tty or not trainer.is_global_zero:
            return
        now = time.monotonic()
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {trainer.current_epoch + 1}{epochs}", f"step {trainer.global_step}"]
        if self._batches:
            parts.append(f"train/loss {float(self._loss_sum) / self._batches:.4f}")
        val = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        # val/auroc first (the monitored metric), then the others as logged
        for key in sorted(val, key=lambda k: (k != "val/auroc", k)):
            parts.append(f"{key} {float(val[key]):.4f}")
        parts.append(duration(now - self._epoch_start))
        eta = eta_seconds(trainer, now - self._fit_start, done)
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        log.info("  ".join(parts))
        # A stream without epochs (src.pretrain) validates every val_check_interval: each line then covers
        # the steps since the previous one.
        self._epoch_start, self._loss_sum, self._batches = now, 0.0, 0
