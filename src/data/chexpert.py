"""CheXpert-v1.0-small: chest radiographs, the 5 competition findings, multilabel with uncertain labels.

Expected layout under ``dataset.root`` (the unzipped ``CheXpert-v1.0-small`` folder or its parent; the
Kaggle mirror drops the top folder but keeps the ``CheXpert-v1.0-small/`` prefix in ``Path``):

    <root>/train.csv  <root>/valid.csv
    <root>/train/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg  <root>/valid/...

Findings in MED-PEFT's order: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion. Values
1 positive, 0 negative, blank (not mentioned) 0, -1 uncertain, resolved by ``uncertainty`` as in the
CheXpert paper (Irvin et al. 2019): ``u_ones`` -> 1, ``u_zeros`` -> 0, ``ignore`` -> unknown (NaN: left out
of the loss and of every metric, see ``src.tasks``); one policy for all, or one per finding
(``{Atelectasis: u_ones, Cardiomegaly: u_zeros, ...}``, the paper's best per finding). ``frontal_only`` drops
lateral views.

Splits: the small download has no test set, so ``valid.csv`` (234 images, radiologist consensus, 0/1 only)
is the **test** split and validation is carved from ``train.csv`` by patient (``val_fraction``, seeded).
MeLo uses ``valid.csv`` as both val and test.

``split_dir`` reads MED-PEFT's lists instead (``DatasetsSplits/CheXpert``): ``train_list`` / ``train_10`` /
``train_1`` (``split_train``) for training, ``val_list`` (the 234 ``valid/`` images) for validation and
``test_list`` (668 images of the later, labelled CheXpert test set under ``CheXpert-v1.0-small/test/``, not in
the small zip: put them there) for testing. Each line is ``CheXpert-v1.0-small/<split>/patientN/studyM/
viewK_<frontal|lateral>.jpg`` and 5 labels 0/1 in the order above, the path relative to the folder holding
``CheXpert-v1.0-small``; the labels come from the list (the test images are in no CSV).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.data.files import FileDataModule, FileSplit, check_labels_match
from src.data.medpeft_lists import medpeft_lists
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
        uncertainty: str | Mapping[str, str] = "u_ones",
        frontal_only: bool = False,
        seed: int = 42,
        val_fraction: float = 0.05,
        split_dir: str | None = None,
        split_train: str = "train_list",
        **kwargs,
    ) -> None:
        super().__init__(task="multilabel", class_names=FINDINGS, **kwargs)
        self.policies = uncertainty_policies(uncertainty)
        if not 0 < val_fraction < 1:
            raise UserError(f"dataset.val_fraction={val_fraction} must lie in (0, 1).")
        self.uncertainty, self.frontal_only = uncertainty, frontal_only
        self.seed, self.val_fraction = seed, val_fraction
        self.split_dir, self.split_train = split_dir, split_train

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
        for column, finding in enumerate(FINDINGS):
            uncertain = values[:, column] == -1.0
            values[uncertain, column] = UNCERTAIN[self.policies[finding]]
        meta = {
            "sex": table["Sex"].fillna("").astype(str).tolist(),
            "age": table["Age"].fillna("").astype(str).tolist(),
        }
        return FileSplit(
            [base / r for r in relative], torch.from_numpy(values), [r.split("/")[1] for r in relative], meta
        )

    def index(self, root: Path) -> dict[str, FileSplit]:
        if self.split_dir is not None:
            return self.index_split_lists(Path(self.split_dir).expanduser(), root)
        base = find_base(root)
        train, test = self.read(base, "train.csv"), self.read(base, "valid.csv")
        # Validation: a stratified, seeded share of training patients, each patient whole.
        held = set(label_fraction_indices(train.targets.numpy(), self.val_fraction, self.seed, train.groups))
        return {
            "train": train.subset([i for i in range(len(train)) if i not in held]),
            "val": train.subset(sorted(held)),
            "test": test,
        }

    def index_split_lists(self, split_dir: Path, root: Path) -> dict[str, FileSplit]:
        """MED-PEFT's lists: ``CheXpert-v1.0-small/... <5 labels 0/1>`` per line, paths relative to the
        folder holding ``CheXpert-v1.0-small`` (``root`` itself or its parent)."""
        lists = medpeft_lists(split_dir, self.split_train, "CheXpert", self.label_fraction)
        out = {}
        for split, (path, rows) in lists.items():
            bad = next((r for r in rows if len(r) != 1 + len(FINDINGS) or set(r[1:]) - LIST_VALUES), None)
            if bad is not None:
                raise UserError(
                    f"{path}: every line should read 'CheXpert-v1.0-small/<split>/patientN/studyM/viewK_"
                    f"<frontal|lateral>.jpg <5 labels 0/1>', got {' '.join(bad)!r}."
                )
            relative = [r[0] for r in rows]
            files = [list_path(root, r) for r in relative]
            missing = [r for r, f in zip(relative, files, strict=True) if not f.exists()]
            check_labels_match(missing, (), path, root)
            labels = np.asarray([[float(v) for v in r[1:]] for r in rows], dtype=np.float32).reshape(-1, 5)
            out[split] = FileSplit(
                files,
                torch.from_numpy(labels),
                [next((p for p in r.split("/") if p.startswith("patient")), r) for r in relative],
            )
        return out


LIST_VALUES = {"0", "1", "0.0", "1.0"}


def list_path(root: Path, relative: str) -> Path:
    """A list path (``CheXpert-v1.0-small/...``) under ``dataset.root``: the folder holding the release folder,
    the release folder itself, or a mirror that dropped it (as the Kaggle copy does)."""
    inner = relative.split("/", 1)[1] if relative.startswith("CheXpert-v1.0") else relative
    for candidate in (root / relative, root / inner):
        if candidate.exists():
            return candidate
    return root / inner if root.name.startswith("CheXpert-v1.0") else root / relative


def uncertainty_policies(uncertainty: str | Mapping[str, str]) -> dict[str, str]:
    """``dataset.uncertainty`` as one policy per finding: a single value applies to all five; a mapping must
    name each finding once (a finding left out would silently fall back to some default)."""
    if isinstance(uncertainty, str):
        if uncertainty not in UNCERTAIN:
            raise UserError(
                f"dataset.uncertainty={uncertainty!r} is unknown; choose one of {list(UNCERTAIN)}, or one per "
                "finding: {Atelectasis: u_ones, Cardiomegaly: u_zeros, ...}."
            )
        given = dict.fromkeys(FINDINGS, uncertainty)
    elif isinstance(uncertainty, Mapping):
        given = {str(k): v for k, v in uncertainty.items()}
        unknown, absent = set(given) - set(FINDINGS), [f for f in FINDINGS if f not in given]
        if unknown or absent:
            raise UserError(
                f"dataset.uncertainty must give a policy for each of {list(FINDINGS)}"
                + (f"; unknown: {sorted(unknown)}" if unknown else "")
                + (f"; missing: {absent}" if absent else "")
                + "."
            )
    else:
        raise UserError(
            f"dataset.uncertainty={uncertainty!r} must be one policy or a mapping finding -> policy."
        )
    wrong = {f: p for f, p in given.items() if p not in UNCERTAIN}
    if wrong:
        raise UserError(f"dataset.uncertainty: {wrong} unknown; each policy is one of {list(UNCERTAIN)}.")
    return given
