"""The one piece of resume state Lightning does not save: every process's torch / CUDA / NumPy / Python RNG.

Lightning's ``ModelCheckpoint`` writes ``last.ckpt`` (model, optimizer, scheduler, loop counters, and the
train loader's position through torchdata's ``StatefulDataLoader``); augmentation is seeded per sample
(:mod:`src.data.sampling`). What is left is the global RNG that dropout and drop-path draw from: this
callback puts each process's states into the checkpoint and gives each process its own back.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist


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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class RngState(L.Callback):
    """Saves every rank's RNG states (gathered: Lightning writes rank 0's checkpoint only) and restores them."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        # Every rank builds the checkpoint dict (rank 0 writes it), so the gather is a collective all join.
        states = [rng_state()]
        if _distributed():
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, rng_state())
        trainer = self._trainer
        mid_epoch = trainer is not None and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        return {"ranks": states, "mid_epoch": mid_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ranks = state["ranks"]
        rank = dist.get_rank() if _distributed() else 0
        if len(ranks) != (dist.get_world_size() if _distributed() else 1):
            raise RuntimeError(
                f"the checkpoint holds the RNG states of {len(ranks)} processes; resume with as many "
                "(trainer.devices x trainer.num_nodes)."
            )
        # An end-of-epoch state is restored now: the next epoch's loader iterator is made after it, as in the
        # uninterrupted run. A mid-epoch state waits for on_train_start, after Lightning re-made the
        # interrupted epoch's iterator (which the uninterrupted run made before the checkpoint).
        if state["mid_epoch"]:
            self._pending = ranks[rank]
        else:
            set_rng_state(ranks[rank])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None
