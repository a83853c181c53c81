"""A shuffling training loader that Lightning can stop and restart mid-epoch at the exact batch.

Lightning stores ``state_dict()`` of any train loader that has one (its ``_Stateful`` protocol) in every
checkpoint and hands it back through ``load_state_dict`` on ``trainer.fit(ckpt_path=...)`` before it iterates
again. The state is the seed of the epoch's permutation and the number of batches already handed out, so a
resumed run draws the rest of the same permutation instead of a fresh one. Without it Lightning restarts the
epoch with new data and warns that results are unreliable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler


class ResumableSampler(RandomSampler):
    """``RandomSampler`` with the same order from the same global RNG state, plus a resume point.

    Like ``RandomSampler`` it draws each epoch's seed from the global torch RNG when iteration starts, so a run
    that never resumes sees exactly the order it would have seen with a plain ``shuffle=True`` loader.
    """

    def __init__(self, data_source: Dataset) -> None:
        super().__init__(data_source)
        self.seed: int | None = None  # the seed of the current epoch's permutation
        self._resume: tuple[int, int] | None = None  # (seed, samples to skip) for the next iteration

    def __iter__(self) -> Iterator[int]:
        if self._resume is not None:
            (self.seed, skip), self._resume = self._resume, None
        else:
            self.seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()[skip:]

    def resume(self, seed: int, skip: int) -> None:
        self._resume = (seed, skip)


class ResumableLoader(DataLoader):
    """A shuffling ``DataLoader`` whose position (epoch seed, batches handed out) goes into checkpoints.

    Under DDP Lightning rebuilds the loader with its ``DistributedSampler`` (passed as ``sampler``); that
    sampler's order is fixed by the epoch, and a resumed run restarts the interrupted epoch's pass over it.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=ResumableSampler(dataset) if sampler is None else sampler, **kwargs)
        self.batches = 0  # batches of the current epoch handed to the trainer, skipped ones included
        self._skipped = 0

    def __iter__(self) -> Iterator[Any]:
        self.batches, self._skipped = self._skipped, 0
        if self.batches:
            # Making the iterator draws the workers' base seed from the global RNG. The interrupted run drew
            # it at the start of the epoch, before the checkpoint whose RNG state is now restored: don't again.
            state = torch.get_rng_state()
            iterator = super().__iter__()
            torch.set_rng_state(state)
        else:
            iterator = super().__iter__()
        for batch in iterator:
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"seed": getattr(self.sampler, "seed", None), "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A checkpoint written after the epoch's last batch resumes with the next epoch, a fresh permutation.
        resumable = isinstance(self.sampler, ResumableSampler)
        if resumable and state["seed"] is not None and 0 < state["batches"] < len(self):
            self.sampler.resume(state["seed"], state["batches"] * self.batch_size)
            self._skipped = state["batches"]
