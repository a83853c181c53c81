"""Datasets whose splits are image files on disk: the machinery every official layout shares.

A dataset module only says how to read its layout (:meth:`FileDataModule.index`: file lists, labels and
patient ids per split, no pixels). This base checks the root, applies ``label_fraction`` to the training
split and builds the datasets that decode the images.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
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


def require_file(path: Path, layout: str) -> Path:
    """``path`` itself, or a UserError naming it and showing the layout it belongs to."""
    if not path.exists():
        raise UserError(f"{path} is missing. Expected layout: {layout}. Check dataset.root.")
    return path


def check_matched(unmatched: Sequence[str], labels: Path | str, images: Path | str, limit: int = 5) -> None:
    """Label entries without an image are an error listing the first few, never silently dropped."""
    if unmatched:
        raise UserError(
            f"{len(unmatched)} entries of {labels} have no image under {images} (first: "
            f"{', '.join(map(str, unmatched[:limit]))}). Complete the download or point dataset.root at it."
        )


def medpeft_lists(split_dir: Path, split_train: str, folder: str) -> dict[str, tuple[Path, list[list[str]]]]:
    """MED-PEFT's split lists (``DatasetsSplits/<folder>``): the whitespace-split lines of ``<split_train>.txt``
    (train_list, or its 10 % / 1 % subsets train_10 / train_1), ``val_list.txt`` and ``test_list.txt``."""
    out = {}
    for split, stem in (("train", split_train), ("val", "val_list"), ("test", "test_list")):
        path = split_dir / f"{stem}.txt"
        if not path.exists():
            raise UserError(
                f"{path} is missing: dataset.split_dir must be MED-PEFT's DatasetsSplits/{folder} folder "
                "(train_list.txt, val_list.txt, test_list.txt; dataset.split_train picks train_list, "
                "train_10 or train_1)."
            )
        out[split] = (path, [line.split() for line in path.read_text().splitlines() if line.strip()])
    return out
