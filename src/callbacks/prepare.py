"""A strategy's ``prepare`` pass (e.g. peft=sparse choosing its weights), once per run, DDP-safe.

It runs inside ``trainer.fit`` at ``setup``, after the process group exists and before the optimizer is
built: rank 0 alone looks at the batches one process would see, on its own device; every other rank gets
rank 0's result (:func:`src.distributed.broadcast_prepared_state`). So a DDP run trains what a one-process
run trains, and N processes do not each run the pass on GPU 0. The global RNG is left untouched, so the
training that follows draws as if there had been no pass.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import lightning as L
import numpy as np
import torch
from torch import Tensor

from src.distributed import broadcast_prepared_state
from src.strategies import Strategy


class StrategyPrepare(L.Callback):
    def __init__(
        self, strategy: Strategy, batches: Callable[[], Iterable], loss: Callable[[Tensor, Tensor], Tensor]
    ) -> None:
        self.strategy, self.batches, self.loss = strategy, batches, loss
        self.done = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.done:
            return
        model = pl_module.model
        if trainer.is_global_zero:
            py_state, np_state = random.getstate(), np.random.get_state()
            with torch.random.fork_rng(devices=[]):
                self.strategy.prepare(model, self.batches(), self.loss, str(trainer.strategy.root_device))
            random.setstate(py_state)
            np.random.set_state(np_state)
        broadcast_prepared_state(trainer, model)
        self.done = True
