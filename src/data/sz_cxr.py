"""Shenzhen chest X-ray set (NLM ``ChinaSet_AllFiles``): tuberculosis vs normal, 662 PNGs.

Expected layout under ``dataset.root`` (the unzipped folder; the Kaggle mirror nests it once more):

    <root>/CXR_png/CHNCXR_0001_0.png ... CHNCXR_0662_1.png   (suffix _0 normal, _1 tuberculosis)

Split: the sorted file list, seeded and stratified by label, into MeLo's 80/10/10 sizes (529 / 67 / 66).
Decoding, the preprocessed cache and label fractions come from :class:`FileDataModule`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from src.data.base import SPLITS
from src.data.files import FileDataModule, FileSplit
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


class ShenzhenCXRDataModule(FileDataModule):
    LAYOUT = LAYOUT

    def __init__(self, seed: int = 42, **kwargs) -> None:
        super().__init__(task="binary", **kwargs)
        self.seed = seed

    def index(self, root: Path) -> dict[str, FileSplit]:
        image_dir = find_image_dir(root)
        files = sorted(p for p in image_dir.iterdir() if PATTERN.search(p.name))
        if len(files) < 3:
            raise UserError(
                f"{image_dir} holds {len(files)} files named CHNCXR_####_[01].png; need at least 3. "
                f"Expected layout: {LAYOUT}."
            )
        labels = [int(PATTERN.search(p.name).group(1)) for p in files]
        parts = stratified_split(labels, holdout_sizes(len(files)), self.seed)
        return {
            s: FileSplit(
                [files[i] for i in idx], torch.as_tensor([labels[i] for i in idx], dtype=torch.int64)
            )
            for s, idx in zip(SPLITS, parts, strict=True)
        }
