"""An unbounded stream of synthetic radiographs for pretraining: every batch is freshly drawn.

Training never sees the same image twice, so the backbone learns the findings, not a finite sample.
Validation and test are fixed sets drawn as in :mod:`src.data.synthetic`.
"""

from __future__ import annotations

from collections.abc import Iterator
from zlib import crc32

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from src.data.base import Normalize
from src.data.radiographs import render
from src.data.synthetic import SyntheticDataModule, sample_findings


class FindingStream(IterableDataset):
    """Endless (image, target) pairs, rendered in chunks; each worker draws its own seeded stream."""

    def __init__(
        self,
        task: str,
        findings: tuple[str, ...],
        prevalence: float,
        size: int,
        seed: int,
        transform: Normalize,
        chunk: int = 256,
    ) -> None:
        self.task, self.findings, self.prevalence = task, findings, prevalence
        self.size, self.seed, self.transform, self.chunk = size, seed, transform, chunk

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        info = get_worker_info()
        worker = info.id if info else 0
        gen = torch.Generator().manual_seed(crc32(f"{self.seed}/stream/{worker}".encode()))
        while True:
            present, target = sample_findings(self.task, self.chunk, len(self.findings), self.prevalence, gen)
            images = render(present, self.findings, self.size, gen)
            flips = torch.rand(self.chunk, generator=gen) < 0.5
            for image, y, flip in zip(images, target, flips, strict=True):
                x = self.transform(image)
                yield (x.flip(-1) if flip else x), y


class SyntheticStreamDataModule(SyntheticDataModule):
    """As ``SyntheticDataModule`` but the train split is unbounded (``sizes.train`` is ignored)."""

    def build_split(self, split: str):
        if split != "train":
            return super().build_split(split)
        return FindingStream(
            self.task_type, self.findings, self.prevalence, self.image_size, self.seed, self.normalize
        )

    def train_dataloader(self, single_process: bool = False):
        # Each worker draws its own endless stream: nothing to shard, shuffle or resume.
        return self._loader("train")
