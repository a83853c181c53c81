"""Datasets whose splits are image files on disk: the machinery every official layout shares.

A dataset module only says how to read its layout (:meth:`FileDataModule.index`: file lists, labels and
patient ids per split, no pixels). This base checks the root, applies ``label_fraction`` to the training
split and builds the datasets that decode the images.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import Tensor

from src.data.base import ClassificationDataModule
from src.data.image_files import ImageFileDataset
from src.errors import UserError


@dataclass
class FileSplit:
    """One split: ``targets`` is (N,) int64 for binary / multiclass, (N, C) float32 for multilabel
    (NaN where a label is unknown and must be left out of loss and metrics); ``groups`` are patient ids,
    so that anything carved from a split keeps each patient on one side."""

    paths: list[Path]
    targets: Tensor
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)


class FileDataModule(ClassificationDataModule):
    """Subclasses set :attr:`LAYOUT` (shown in every error about the root) and implement :meth:`index`."""

    LAYOUT: ClassVar[str] = ""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.splits: dict[str, FileSplit] = {}

    @abstractmethod
    def index(self, root: Path) -> dict[str, FileSplit]:
        """Read the layout and label files under ``root`` (never the pixels) into train / val / test."""

    def check(self) -> None:
        if self.root is None:
            raise UserError(f"dataset.root is not set. Expected layout: {self.LAYOUT}.")
        root = Path(self.root).expanduser()
        if not root.exists():
            raise UserError(
                f"dataset.root={root} does not exist. Expected layout: {self.LAYOUT}. "
                f"Pass dataset.root=/path/to/{self.name}."
            )
        self.splits = self.index(root)

    def build_split(self, split: str) -> ImageFileDataset:
        if not self.splits:
            self.check()
        part = self.splits[split]
        return ImageFileDataset(
            part.paths, part.targets, self.image_size, self.normalize, self.hflip and split == "train"
        )
