"""Kaggle "blood-cells" (paultimothymooney), augmented set: 4 white-blood-cell types, as MeLo uses it.

Expected layout under ``dataset.root`` (the folder that holds ``images/``; the Kaggle download nests it as
``dataset2-master/dataset2-master/images``, which is found too):

    <root>/images/{TRAIN,TEST,TEST_SIMPLE}/{NEUTROPHIL,MONOCYTE,EOSINOPHIL,LYMPHOCYTE}/*.jpeg

Splits and labels as MeLo (``utils/dataloader_blood_cell.py``): TRAIN -> train (9,957), TEST -> val
(2,487), TEST_SIMPLE -> test (71); NEUTROPHIL 0, MONOCYTE 1, EOSINOPHIL 2, LYMPHOCYTE 3.
"""

from __future__ import annotations

from pathlib import Path

import torch

from src.data.files import FileDataModule, FileSplit
from src.errors import UserError

CLASSES = ("NEUTROPHIL", "MONOCYTE", "EOSINOPHIL", "LYMPHOCYTE")
SPLIT_DIRS = {"train": "TRAIN", "val": "TEST", "test": "TEST_SIMPLE"}
SUFFIXES = (".jpeg", ".jpg", ".png")
NESTINGS = ("images", "dataset2-master/dataset2-master/images", "dataset2-master/images")
LAYOUT = "<root>/images/{TRAIN,TEST,TEST_SIMPLE}/{NEUTROPHIL,MONOCYTE,EOSINOPHIL,LYMPHOCYTE}/*.jpeg"


def find_images(root: Path) -> Path:
    for nesting in NESTINGS:
        if (root / nesting / "TRAIN").is_dir():
            return root / nesting
    raise UserError(
        f"dataset.root={root} does not hold the blood-cells images. Expected layout: {LAYOUT} "
        "(the Kaggle download's dataset2-master/dataset2-master/images is found too)."
    )


class BloodCellsDataModule(FileDataModule):
    LAYOUT = LAYOUT

    def __init__(self, **kwargs) -> None:
        super().__init__(task="multiclass", class_names=[c.lower() for c in CLASSES], **kwargs)

    def index(self, root: Path) -> dict[str, FileSplit]:
        images = find_images(root)
        out = {}
        for split, folder in SPLIT_DIRS.items():
            base = images / folder
            if not base.is_dir():
                raise UserError(f"{base} is missing. Expected layout: {LAYOUT}.")
            unknown = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in CLASSES)
            if unknown:
                raise UserError(f"{base} holds class folders {unknown}; expected only {list(CLASSES)}.")
            paths, labels = [], []
            for label, name in enumerate(CLASSES):
                files = sorted(p for p in (base / name).glob("*") if p.suffix.lower() in SUFFIXES)
                paths += files
                labels += [label] * len(files)
            if not paths:
                raise UserError(f"{base} holds no images. Expected layout: {LAYOUT}.")
            out[split] = FileSplit(paths, torch.as_tensor(labels, dtype=torch.int64))
        return out
