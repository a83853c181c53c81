"""The training loader: resumable mid-epoch, and augmentation that depends only on (seed, epoch, sample).

* :class:`EpochSampler` is a ``DistributedSampler`` (so Lightning keeps it under DDP instead of replacing
  it) whose order depends only on (seed, epoch), with one process or many. Its state (epoch, samples
  handed out) goes into the checkpoint through torchdata's ``StatefulDataLoader``, which Lightning saves
  and restores like any loader with ``state_dict``, and which snapshots it correctly with worker processes.
* It yields ``(epoch, index)``; :class:`SeededSamples` seeds torch, Python ``random`` and NumPy from
  (seed, epoch, index) before the wrapped dataset draws its augmentation, and restores the caller's RNG
  states after. Any transform (ours, torchvision's, timm's RandAugment, which draws from ``random``) then
  gives the same image for the same sample whatever the worker count, the process count or a resume.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one draw of one sample (NumPy's SeedSequence hashing)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


class SeededSamples(Dataset):
    """``dataset[(epoch, index)]`` = ``dataset[index]`` with every RNG seeded from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        # Restored after: with num_workers=0 this runs in the training process, whose RNG drives dropout.
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(s)  # CPU only: never touches the CUDA generators
            random.seed(s)
            np.random.seed(s & 0xFFFFFFFF)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class EpochSampler(DistributedSampler):
    """Shuffled shards of (seed, epoch) yielding ``(epoch, index)``; with ``num_replicas=1`` it is a plain
    shuffle of the whole split. Lightning calls ``set_epoch`` before every epoch; the state restores both."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.yielded = 0
        self._skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch, (skip, self._skip) = self.epoch, (self._skip, 0)
        self.yielded = skip
        for i, index in enumerate(super().__iter__()):
            if i >= skip:
                self.yielded += 1
                yield epoch, index

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_replicas"] != self.num_replicas:
            # The same samples would be seen twice or never: refuse instead of resuming silently wrong.
            raise RuntimeError(
                f"the checkpoint was written by {state['num_replicas']} processes, this run has "
                f"{self.num_replicas}; resume with the same trainer.devices x trainer.num_nodes."
            )
        done = state["yielded"] >= self.num_samples
        # A finished epoch resumes at the start of the next one (Lightning's set_epoch agrees).
        self.epoch = state["epoch"] + 1 if done else state["epoch"]
        self._skip = 0 if done else state["yielded"]


def train_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    seed: int,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
) -> StatefulDataLoader:
    """The resumable, seeded training loader of ``dataset`` for process ``rank`` of ``num_replicas``."""
    return StatefulDataLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=EpochSampler(dataset, num_replicas, rank, seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
