"""SIGTERM (the preemption signal of SLURM and Kubernetes): every rank stops at the same batch boundary,
with ``last.ckpt`` written, so ``resume=true`` continues at the next batch.

Lightning's own handler notes SIGTERM per process and, in the handler itself, joins a broadcast that the
other ranks are not in; a rank whose flag is set stops alone while the others wait in the next collective.
Here the handler only sets a flag; the flags are OR-reduced at the end of every batch; a stop inside a
gradient-accumulation window waits for its optimizer step (a checkpoint there would lose the accumulated
gradients); then Lightning's flag is set on every rank, so every rank raises ``SIGTERMException`` after the
same batch, and Lightning's ``OnExceptionCheckpoint`` writes the checkpoint, on SIGTERM only (a NaN loss or
a bug must not overwrite the last good ``last.ckpt``).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class Preemption(OnExceptionCheckpoint):
    def __init__(self, dirpath: str, filename: str = "last") -> None:
        super().__init__(dirpath, filename)
        self.requested = False  # this process got SIGTERM
        self._pending = False  # some rank did, inside an accumulation window

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning installed its handlers (it restores the originals at teardown).
        def handler(signum: int, _: Any) -> None:
            if not self.requested and trainer.strategy.launcher is not None:
                trainer.strategy.launcher.kill(signum)  # as Lightning: pass it on to the processes it started
            self.requested = True

        signal.signal(signal.SIGTERM, handler)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = self._pending or self.requested
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        accumulating = (batch_idx + 1) % trainer.accumulate_grad_batches != 0 and not last
        self._pending = stop and accumulating
        if stop and not accumulating:
            # Lightning raises SIGTERMException right after this batch on every rank with its flag set.
            trainer._signal_connector.received_sigterm = True

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            super().on_exception(trainer, pl_module, exception)
            log.warning("SIGTERM: wrote %s at step %d", self.ckpt_path, trainer.global_step)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Lightning's removes its file after a clean fit; ``last.ckpt`` stays, to extend the run later."""
