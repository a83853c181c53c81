"""RSNA Pneumonia Detection Challenge (Kaggle, stage 2): one binary label per patient from the box table.

Expected layout under ``dataset.root`` (the unzipped competition download):

    <root>/stage_2_train_labels.csv   patientId,x,y,width,height,Target (one row per box; Target 0 rows
                                      have no box)
    <root>/stage_2_train_images/<patientId>.dcm

Label: 1 when any of the patient's rows has Target 1 (lung opacity), else 0. The stage-2 test images have
no public labels, so by default the 26,684 labelled patients are split seeded and stratified in MED-PEFT's
proportions (its val 1,500 and test 3,000 out of 26,684; train gets the rest). ``dataset.split_dir=PATH``
reads MED-PEFT's lists instead (``DatasetsSplits/RSNA_Pneumonia``: ``train_list.txt`` / ``train_10.txt`` /
``train_1.txt`` chosen by ``split_train``, ``val_list.txt``, ``test_list.txt``; each line
``<path relative to root> <0|1>``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch

from src.data.base import SPLITS
from src.data.files import FileDataModule, FileSplit, check_labels_match
from src.data.medpeft_lists import medpeft_lists
from src.data.splits import stratified_split
from src.data.subgroups import dicom_subgroups
from src.errors import UserError

LABELS = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
LAYOUT = f"<root>/{LABELS} (patientId,x,y,width,height,Target) and <root>/{IMAGES}/<patientId>.dcm"
# MED-PEFT's held-out sizes out of the 26,684 labelled patients.
MEDPEFT_TOTAL, MEDPEFT_VAL, MEDPEFT_TEST = 26_684, 1_500, 3_000


def medpeft_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) in MED-PEFT's proportions; 26,684 -> 22,184 / 1,500 / 3,000."""
    val = max(1, round(n * MEDPEFT_VAL / MEDPEFT_TOTAL))
    test = max(1, round(n * MEDPEFT_TEST / MEDPEFT_TOTAL))
    if n - val - test < 1:
        raise UserError(f"{n} labelled patients are too few for a train / val / test split.")
    return n - val - test, val, test


class RSNAPneumoniaDataModule(FileDataModule):
    LAYOUT = LAYOUT

    def __init__(
        self, seed: int = 42, split_dir: str | None = None, split_train: str = "train_list", **kwargs
    ) -> None:
        super().__init__(task="binary", class_names=("no_opacity", "lung_opacity"), **kwargs)
        self.seed, self.split_dir, self.split_train = seed, split_dir, split_train

    def subgroups(self, split: str) -> dict[str, list[str]]:
        """PatientSex / PatientAge from the split's DICOM headers."""
        self.check()
        return dicom_subgroups(self.splits[split].paths)

    def index(self, root: Path) -> dict[str, FileSplit]:
        if self.split_dir is not None:
            return self.index_split_lists(Path(self.split_dir).expanduser(), root)
        label_file = self.require(root / LABELS, "label file")
        try:
            table = pd.read_csv(label_file, usecols=["patientId", "Target"])
        except ValueError as err:
            raise UserError(f"{label_file} lacks the columns patientId, Target: {err}.") from None
        per_patient = table.groupby("patientId", sort=True)["Target"].max()
        image_dir = self.require(root / IMAGES, "image folder")
        with os.scandir(image_dir) as entries:
            found = {e.name.removesuffix(".dcm") for e in entries if e.name.endswith(".dcm")}
        check_labels_match(per_patient.index, found, label_file, image_dir)
        ids, labels = list(per_patient.index), per_patient.to_numpy().astype(int).tolist()
        parts = stratified_split(labels, medpeft_sizes(len(ids)), self.seed)
        return {
            split: FileSplit(
                [image_dir / f"{ids[i]}.dcm" for i in idx],
                torch.as_tensor([labels[i] for i in idx], dtype=torch.int64),
                [ids[i] for i in idx],
            )
            for split, idx in zip(SPLITS, parts, strict=True)
        }

    def index_split_lists(self, split_dir: Path, root: Path) -> dict[str, FileSplit]:
        """MED-PEFT's lists: ``<dcm path relative to root> <0|1>`` per line."""
        out = {}
        for split, (path, rows) in medpeft_lists(
            split_dir, self.split_train, "RSNA_Pneumonia", self.label_fraction
        ).items():
            bad = next((r for r in rows if len(r) != 2 or r[1] not in ("0", "1")), None)
            if bad is not None:
                raise UserError(f"{path}: every line should read '<dcm path> <0|1>', got {' '.join(bad)!r}.")
            check_labels_match([r[0] for r in rows if not (root / r[0]).exists()], (), path, root)
            out[split] = FileSplit(
                [root / r[0] for r in rows],
                torch.as_tensor([int(r[1]) for r in rows], dtype=torch.int64),
                [Path(r[0]).stem for r in rows],
            )
        return out
