"""INbreast: 410 full-field digital mammograms (DICOM), BI-RADS binarised as in MeLo.

Expected layout under ``dataset.root`` (the ``INbreast Release 1.0`` folder or its parent):

    <root>/INbreast.csv   ';'-separated: Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads
    <root>/AllDICOMs/<File Name>_<patient hash>_MG_<R|L>_<CC|ML>_ANON.dcm

The release's ``INbreast.xls`` holds the same table; reading .xls needs xlrd, which medpeft does not depend
on, so export its first sheet as CSV (the release already ships ``INbreast.csv``).

Label (MeLo ``utils/dataloader_inbreast.py``, 2 classes): BI-RADS 1, 2, 3 -> 0 (benign), 4a/4b/4c/5/6 -> 1.
Splits (MeLo ``train_kfold.py``): 5 folds **by patient** (the hash in the file name; the table's Patient ID
is "removed"), seeded and stratified by the patient's label; ``fold=k`` tests on fold k, validates on fold
k+1 (mod 5) and trains on the other three. MeLo's own fold file is not public, so the folds differ from its.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.data.files import FileDataModule, FileSplit, check_labels_match
from src.data.splits import iterative_stratification
from src.data.subgroups import dicom_subgroups
from src.errors import UserError

FOLDS = 5
RELEASE = "INbreast Release 1.0"
LAYOUT = (
    "<root>/INbreast.csv (';'-separated, columns 'File Name' and 'Bi-Rads') and "
    "<root>/AllDICOMs/<File Name>_<patient hash>_MG_<R|L>_<CC|ML>_ANON.dcm"
)


def find_base(root: Path) -> Path:
    return root / RELEASE if (root / RELEASE / "AllDICOMs").is_dir() else root


def birads_label(value: str, source: Path) -> int:
    """MeLo's 2-class mapping on the category's first character: 1-3 -> 0, 4a/4b/4c/5/6 -> 1."""
    first = value.strip()[:1]
    if not first or first not in "123456":
        raise UserError(f"{source}: Bi-Rads value {value!r} is not one of 1, 2, 3, 4a, 4b, 4c, 5, 6.")
    return int(first >= "4")


def patient_folds(patients: list[str], labels: list[int], seed: int) -> np.ndarray:
    """Fold (0..4) of every image: whole patients, seeded, stratified on the patients' labels (iterative
    stratification over patients, as ``label_fraction`` uses) so that folds are balanced in size and label."""
    uniq, unit = np.unique(np.asarray(patients), return_inverse=True)
    if len(uniq) < FOLDS:
        raise UserError(f"{FOLDS} folds need at least {FOLDS} patients; the INbreast files hold {len(uniq)}.")
    per_patient = np.zeros((len(uniq), 2))
    np.add.at(per_patient, unit, np.eye(2)[np.asarray(labels)])
    weights = np.bincount(unit).astype(np.float64)
    rng = np.random.default_rng(seed)
    return iterative_stratification(per_patient, weights, [1 / FOLDS] * FOLDS, rng)[unit]


class INbreastDataModule(FileDataModule):
    LAYOUT = LAYOUT

    def __init__(self, fold: int = 0, seed: int = 42, **kwargs) -> None:
        super().__init__(task="binary", class_names=("benign", "suspicious"), **kwargs)  # BI-RADS 1-3 / 4-6
        if fold not in range(FOLDS):
            raise UserError(f"dataset.fold={fold} must be one of 0..{FOLDS - 1} (the test fold).")
        self.fold, self.seed = fold, seed

    def subgroups(self, split: str) -> dict[str, list[str]]:
        """PatientSex / PatientAge from the split's DICOM headers."""
        self.check()
        return dicom_subgroups(self.splits[split].paths)

    def read_table(self, base: Path) -> dict[str, int]:
        """File Name -> label; rows without a numeric File Name (an exported sheet's totals footer) are skipped."""
        path = base / "INbreast.csv"
        if not path.exists() and (base / "INbreast.xls").exists():
            raise UserError(
                f"{base / 'INbreast.xls'} found but no INbreast.csv: medpeft reads the CSV (reading .xls would need "
                f"xlrd). Open the .xls, save Sheet1 as CSV to {path} (or copy the release's INbreast.csv there)."
            )
        self.require(path, "label table")
        sep = ";" if ";" in path.read_text(errors="replace").split("\n", 1)[0] else ","
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        table.columns = [c.strip() for c in table.columns]
        if not {"File Name", "Bi-Rads"} <= set(table.columns):
            raise UserError(
                f"{path} lacks the columns 'File Name' and 'Bi-Rads' (has {list(table.columns)})."
            )
        labels = {}
        for name, birads in zip(table["File Name"], table["Bi-Rads"], strict=True):
            name = name.strip().removesuffix(".0")
            if name.isdigit():
                labels[name] = birads_label(birads, path)
        return labels

    def index(self, root: Path) -> dict[str, FileSplit]:
        base = find_base(root)
        dicom_dir = self.require(base / "AllDICOMs", "DICOM folder")
        labels = self.read_table(base)
        with os.scandir(dicom_dir) as entries:
            dicoms = {e.name.split("_")[0]: Path(e.path) for e in entries if e.name.lower().endswith(".dcm")}
        names = sorted(labels)
        check_labels_match(names, dicoms, base / "INbreast.csv", dicom_dir)
        patients = [dicoms[n].name.split("_")[1] for n in names]
        targets = [labels[n] for n in names]
        every = FileSplit([dicoms[n] for n in names], torch.as_tensor(targets, dtype=torch.int64), patients)
        folds = patient_folds(patients, targets, self.seed)
        val_fold = (self.fold + 1) % FOLDS
        return {
            "train": every.subset(np.flatnonzero((folds != self.fold) & (folds != val_fold))),
            "val": every.subset(np.flatnonzero(folds == val_fold)),
            "test": every.subset(np.flatnonzero(folds == self.fold)),
        }
