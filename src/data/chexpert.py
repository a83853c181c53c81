"""CheXpert-v1.0-small: chest radiographs, the 5 competition findings, multilabel with uncertain labels.

Expected layout under ``dataset.root`` (the unzipped ``CheXpert-v1.0-small`` folder or its parent; the
Kaggle mirror drops the top folder but keeps the ``CheXpert-v1.0-small/`` prefix in ``Path``):

    <root>/train.csv  <root>/valid.csv
    <root>/train/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg  <root>/valid/...

Findings in MED-PEFT's order: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion. Values
1 positive, 0 negative, blank (not mentioned) 0, -1 uncertain, resolved by ``uncertainty`` as in the
CheXpert paper (Irvin et al. 2019): ``u_ones`` -> 1, ``u_zeros`` -> 0, ``ignore`` -> unknown (NaN: left out
of the loss and of every metric, see ``src.tasks``). ``frontal_only`` drops lateral views.

Splits: the small download has no test set, so ``valid.csv`` (234 images, radiologist consensus, 0/1 only)
is the **test** split and validation is carved from ``train.csv`` by patient (``val_fraction``, seeded).
MeLo uses ``valid.csv`` as both val and test; MED-PEFT tests on the later CheXpert test set, not in this zip.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.data.files import FileDataModule, FileSplit, check_labels_match
from src.data.splits import label_fraction_indices
from src.errors import UserError

FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
UNCERTAIN = {"u_ones": 1.0, "u_zeros": 0.0, "ignore": float("nan")}
FOLDERS = ("", "CheXpert-v1.0-small", "CheXpert-v1.0")
LAYOUT = "<root>/train.csv, <root>/valid.csv, <root>/{train,valid}/patientNNNNN/studyN/viewN_frontal.jpg"


def find_base(root: Path) -> Path:
    for folder in FOLDERS:
        if (root / folder / "train.csv").exists():
            return root / folder
    raise UserError(
        f"dataset.root={root} holds no CheXpert train.csv (looked in {root} and {root}/CheXpert-v1.0-small). "
        f"Expected layout: {LAYOUT}."
    )


class CheXpertDataModule(FileDataModule):
    LAYOUT = LAYOUT

    def __init__(
        self,
        uncertainty: str = "u_ones",
        frontal_only: bool = False,
        seed: int = 42,
        val_fraction: float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(task="multilabel", class_names=FINDINGS, **kwargs)
        if uncertainty not in UNCERTAIN:
            raise UserError(
                f"dataset.uncertainty={uncertainty!r} is unknown; choose one of {list(UNCERTAIN)}."
            )
        if not 0 < val_fraction < 1:
            raise UserError(f"dataset.val_fraction={val_fraction} must lie in (0, 1).")
        self.uncertainty, self.frontal_only = uncertainty, frontal_only
        self.seed, self.val_fraction = seed, val_fraction

    def read(self, base: Path, csv_name: str) -> FileSplit:
        path = self.require(base / csv_name, "label file")
        try:
            table = pd.read_csv(path, usecols=["Path", "Frontal/Lateral", *FINDINGS, "Sex", "Age"])
        except ValueError as err:
            raise UserError(f"{path} lacks the CheXpert columns: {err}. Expected layout: {LAYOUT}.") from None
        if self.frontal_only:
            table = table[table["Frontal/Lateral"] == "Frontal"]
        # Path starts with the release folder (CheXpert-v1.0-small/...), relative to the folder above it.
        relative = [p.split("/", 1)[1] if p.startswith("CheXpert-v1.0") else p for p in table["Path"]]
        missing = [r for r in relative if not os.path.exists(os.path.join(base, r))]
        check_labels_match(missing, (), path, base)
        values = table[list(FINDINGS)].to_numpy(dtype=np.float32)
        values = np.where(np.isnan(values), 0.0, values)  # blank = not mentioned = negative
        values = np.where(values == -1.0, UNCERTAIN[self.uncertainty], values)
        meta = {
            "sex": table["Sex"].fillna("").astype(str).tolist(),
            "age": table["Age"].fillna("").astype(str).tolist(),
        }
        return FileSplit(
            [base / r for r in relative], torch.from_numpy(values), [r.split("/")[1] for r in relative], meta
        )

    def index(self, root: Path) -> dict[str, FileSplit]:
        base = find_base(root)
        train, test = self.read(base, "train.csv"), self.read(base, "valid.csv")
        # Validation: a stratified, seeded share of training patients, each patient whole.
        held = set(label_fraction_indices(train.targets.numpy(), self.val_fraction, self.seed, train.groups))
        return {
            "train": train.subset([i for i in range(len(train)) if i not in held]),
            "val": train.subset(sorted(held)),
            "test": test,
        }
