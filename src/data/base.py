"""The DataModule base every dataset builds on: splits, loaders and the task it defines."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from src.data.sampling import train_loader

SPLITS = ("train", "val", "test")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class Normalize:
    """uint8 (H, W) or (H, W, 3) image -> normalised float (3, H, W); grayscale repeated for RGB backbones."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Tensor) -> Tensor:
        x = image.float().div_(255.0)
        x = x.unsqueeze(0).expand(3, -1, -1) if x.ndim == 2 else x.permute(2, 0, 1)
        return (x - self.mean) / self.std


class ClassificationDataModule(L.LightningDataModule):
    """Subclasses say how to build each split and which task the labels define."""

    def __init__(
        self,
        name: str,
        root: str | None,
        task: str,
        class_names: Sequence[str],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 32,
        num_workers: int = 0,
        hflip: bool = True,
    ) -> None:
        super().__init__()
        self.name, self.root = name, root
        self.task_type, self.class_names = task, tuple(class_names)
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.normalize = Normalize(mean, std)
        self.hflip = hflip
        # How images are decoded (gray or rgb, see src.data.image_files.COLORS); recorded in the adapter so
        # that src.predict reads images the same way.
        self.color = "gray"
        self.datasets: dict[str, Dataset] = {}
        # The order and augmentation of training samples are functions of (this seed, epoch, sample); the
        # training entry point sets it to the run's ``seed``.
        self.shuffle_seed = 0

    @abstractmethod
    def build_split(self, split: str) -> Dataset:
        """The dataset of one split, with training augmentation only for ``train``."""

    def check(self) -> None:
        """Cheap validation of the source (paths, label files) before any model is built."""

    def report(self, out: Path) -> tuple[dict[str, Any], list[Path]]:
        """After training: entries for metrics.json and files written under ``out`` to log as artifacts."""
        return {}, []

    def split_dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.datasets[split] = self.build_split(split)
        return self.datasets[split]

    def sample_ids(self, split: str) -> list[str] | None:
        """A stable id for every case of ``split``, in the order the loaders yield them: here the index (data
        generated or held in arrays); file datasets give the file. None for an unbounded stream."""
        dataset = self.split_dataset(split)
        return [str(i) for i in range(len(dataset))] if hasattr(dataset, "__len__") else None

    def split_targets(self, split: str) -> Tensor | None:
        """The labels of ``split`` in the same order (as the dataset stores them), or None if unknown."""
        return getattr(self.split_dataset(split), "targets", None)

    def subgroups(self, split: str) -> dict[str, list[str]]:
        """Attributes for subgroup analysis (``sex``, ``age``, a CSV's columns), one raw value per case of
        ``split`` ('' where unknown); datasets that carry none return {}."""
        return {}

    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage, SPLITS) if stage else SPLITS:
            if split not in self.datasets:
                self.datasets[split] = self.build_split(split)

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self, single_process: bool = False) -> DataLoader:
        """Shuffled, seeded, resumable mid-epoch (:mod:`src.data.sampling`); under DDP this process's shard,
        unless ``single_process`` (the order one process would see, e.g. for a strategy's prepare pass)."""
        trainer = None if single_process else self.trainer
        return train_loader(
            self.datasets["train"],
            self.batch_size,
            self.num_workers,
            self.shuffle_seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
