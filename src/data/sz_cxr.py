"""Shenzhen chest X-ray set (NLM ``ChinaSet_AllFiles``): tuberculosis vs normal, 662 PNGs.

Expected layout under ``dataset.root`` (the unzipped folder; the Kaggle mirror nests it once more):

    <root>/CXR_png/CHNCXR_0001_0.png ... CHNCXR_0662_1.png   (suffix _0 normal, _1 tuberculosis)

Split: the sorted file list, seeded and stratified by label, into MeLo's 80/10/10 sizes (529 / 67 / 66).
Images are decoded on access; the preprocessed cache for full-size radiographs is a later addition.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from src.data.base import SPLITS, ClassificationDataModule
from src.data.image_files import ImageFileDataset
from src.data.splits import holdout_sizes, stratified_split
from src.errors import UserError

PATTERN = re.compile(r"CHNCXR_\d{4}_([01])\.png$", re.IGNORECASE)
LAYOUT = "<root>/CXR_png/CHNCXR_0001_0.png ... (662 PNGs; the _0/_1 suffix is the label)"


def find_image_dir(root: Path) -> Path:
    for candidate in (root / "CXR_png", root / "ChinaSet_AllFiles" / "CXR_png"):
        if candidate.is_dir():
            return candidate
    raise UserError(
        f"dataset.root={root} does not hold the Shenzhen chest X-ray set. Expected layout: {LAYOUT}. "
        "Download ChinaSet_AllFiles.zip from the NLM, unzip it and pass dataset.root=/path/to/ChinaSet_AllFiles."
    )


class ShenzhenCXRDataModule(ClassificationDataModule):
    def __init__(self, seed: int = 42, **kwargs) -> None:
        super().__init__(task="binary", **kwargs)
        self.seed = seed
        self.splits: dict[str, tuple[list[Path], list[int]]] = {}

    def check(self) -> None:
        if self.root is None:
            raise UserError(f"dataset.root is not set. Expected layout: {LAYOUT}.")
        image_dir = find_image_dir(Path(self.root).expanduser())
        files = sorted(p for p in image_dir.iterdir() if PATTERN.search(p.name))
        if len(files) < 3:
            raise UserError(
                f"{image_dir} holds {len(files)} files named CHNCXR_####_[01].png; need at least 3. "
                f"Expected layout: {LAYOUT}."
            )
        labels = [int(PATTERN.search(p.name).group(1)) for p in files]
        parts = stratified_split(labels, holdout_sizes(len(files)), self.seed)
        self.splits = {
            s: ([files[i] for i in idx], [labels[i] for i in idx])
            for s, idx in zip(SPLITS, parts, strict=True)
        }

    def build_split(self, split: str) -> ImageFileDataset:
        if not self.splits:
            self.check()
        paths, labels = self.splits[split]
        targets = torch.as_tensor(labels, dtype=torch.int64)
        return ImageFileDataset(
            paths, targets, self.image_size, self.normalize, self.hflip and split == "train"
        )
