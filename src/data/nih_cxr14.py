"""NIH ChestX-ray14: 112,120 frontal radiographs, 14 text-mined findings, multilabel.

Expected layout under ``dataset.root`` (NIH Box release or the Kaggle mirror):

    <root>/Data_Entry_2017.csv  (or Data_Entry_2017_v2020.csv, preferred when both are present)
    <root>/train_val_list.txt  <root>/test_list.txt
    <root>/images/*.png  or  <root>/images_001/images/*.png ... images_012/images/*.png

Official split: ``test_list.txt`` is the test set; validation is carved from ``train_val_list.txt`` by
**patient** (seeded; ``val_fraction`` 1/8 as MeLo's 7:1 train/val), so no patient is in two splits.
Labels: ``Finding Labels`` split on ``|`` into the 14 findings in MeLo / MED-PEFT / ChestMNIST order;
``No Finding`` is all zeros.

``dataset.split_dir=PATH`` reads MED-PEFT's lists instead (``DatasetsSplits/NIH_ChestX-ray/``:
``train_list.txt`` / ``train_10.txt`` / ``train_1.txt`` chosen by ``split_train``, ``val_list.txt``,
``test_list.txt``; each line ``<png name> <14 labels 0/1>``). That split is not the official one (its sizes,
78,468 / 11,219 / 22,433, are ChestMNIST's); labels come from the lists, images from the folders above.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.data.files import FileDataModule, FileSplit, check_labels_match
from src.data.medpeft_lists import medpeft_lists
from src.data.splits import label_fraction_indices
from src.errors import UserError

FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
LABEL_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
# For subgroup AUROC (src.stats); the v2020 file calls Patient Gender "Patient Sex".
SUBGROUP_COLUMNS = {"Patient Gender": "sex", "Patient Sex": "sex", "Patient Age": "age"}
LAYOUT = (
    "<root>/Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv), <root>/train_val_list.txt, "
    "<root>/test_list.txt and the PNGs in <root>/images/ or <root>/images_0XX/images/"
)


def find_images(root: Path) -> dict[str, Path]:
    """File name -> folder of every PNG in the Box layout (``images/``) or the Kaggle one (``images_0XX/images/``)."""
    found: dict[str, Path] = {}
    for folder in [root / "images", *sorted(root.glob("images_*/images"))]:
        if folder.is_dir():
            with os.scandir(folder) as entries:
                found.update((e.name, folder) for e in entries if e.name.endswith(".png"))
    if not found:
        raise UserError(f"dataset.root={root} holds no NIH ChestX-ray14 PNGs. Expected layout: {LAYOUT}.")
    return found


def multi_hot(finding_labels: pd.Series, source: Path) -> np.ndarray:
    """(N, 14) float32 from ``Finding Labels`` (``A|B``; ``No Finding`` is all zeros)."""
    dummies = finding_labels.str.get_dummies(sep="|")
    unknown = sorted(set(dummies.columns) - {*FINDINGS, "No Finding"})
    if unknown:
        raise UserError(f"{source}: unknown finding(s) {unknown}; the 14 NIH findings are {list(FINDINGS)}.")
    return dummies.reindex(columns=list(FINDINGS), fill_value=0).to_numpy(dtype=np.float32)


def patient_of(name: str) -> str:
    return name.split("_", 1)[0]  # <8-digit patient>_<3-digit follow-up>.png


class NIHChestXray14DataModule(FileDataModule):
    LAYOUT = LAYOUT

    def __init__(
        self,
        seed: int = 42,
        val_fraction: float = 0.125,
        split_dir: str | None = None,
        split_train: str = "train_list",
        **kwargs,
    ) -> None:
        super().__init__(task="multilabel", class_names=FINDINGS, **kwargs)
        if not 0 < val_fraction < 1:
            raise UserError(f"dataset.val_fraction={val_fraction} must lie in (0, 1).")
        self.seed, self.val_fraction = seed, val_fraction
        self.split_dir, self.split_train = split_dir, split_train

    def index(self, root: Path) -> dict[str, FileSplit]:
        images = find_images(root)
        if self.split_dir is not None:
            return self.index_split_lists(Path(self.split_dir).expanduser(), images, root)
        label_file = next((root / f for f in LABEL_FILES if (root / f).exists()), root / LABEL_FILES[-1])
        try:
            # index_col=False: the v2020 rows end with a comma the header may lack, which would shift columns.
            table = pd.read_csv(
                self.require(label_file, "label file"),
                usecols=lambda c: c in {"Image Index", "Finding Labels", "Patient ID", *SUBGROUP_COLUMNS},
                index_col=False,
                dtype=str,
            )
        except ValueError as err:
            raise UserError(
                f"{label_file} lacks the NIH columns: {err}. Expected layout: {LAYOUT}."
            ) from None
        missing = {"Image Index", "Finding Labels", "Patient ID"} - set(table.columns)
        if missing:
            raise UserError(
                f"{label_file} lacks the NIH columns {sorted(missing)}. Expected layout: {LAYOUT}."
            )
        labels = multi_hot(table["Finding Labels"], label_file)
        patients = table["Patient ID"].tolist()
        row_of = {name: i for i, name in enumerate(table["Image Index"])}
        train_val, test = (self.read_list(root / name) for name in ("train_val_list.txt", "test_list.txt"))
        for listed, list_file in ((train_val, "train_val_list.txt"), (test, "test_list.txt")):
            unlabelled = [n for n in listed if n not in row_of]
            if unlabelled:
                raise UserError(
                    f"{len(unlabelled)} images of {root / list_file} have no row in {label_file} (first: "
                    f"{', '.join(unlabelled[:5])}). Use the label file and lists of the same release."
                )
            check_labels_match(listed, images, root / list_file, root)
        # Validation: a stratified, seeded share of train_val patients, each patient whole.
        rows = np.asarray([row_of[n] for n in train_val], dtype=np.int64)
        held = np.zeros(len(rows), dtype=bool)
        held[
            label_fraction_indices(labels[rows], self.val_fraction, self.seed, [patients[r] for r in rows])
        ] = True
        names = {
            "train": [n for n, h in zip(train_val, held, strict=True) if not h],
            "val": [n for n, h in zip(train_val, held, strict=True) if h],
            "test": test,
        }
        out = {}
        for split, listed in names.items():
            idx = [row_of[n] for n in listed]
            out[split] = FileSplit(
                [images[n] / n for n in listed],
                torch.from_numpy(labels[idx]),
                [patients[i] for i in idx],
                {
                    key: table[col].iloc[idx].fillna("").tolist()
                    for col, key in SUBGROUP_COLUMNS.items()
                    if col in table
                },
            )
        return out

    def read_list(self, path: Path) -> list[str]:
        return [
            line.strip() for line in self.require(path, "split list").read_text().splitlines() if line.strip()
        ]

    def index_split_lists(self, split_dir: Path, images: dict[str, Path], root: Path) -> dict[str, FileSplit]:
        """MED-PEFT's lists: ``<png name> <14 labels>`` per line (the last line lacks its newline)."""
        out = {}
        meta = list_subgroups(root)
        for split, (path, rows) in medpeft_lists(
            split_dir, self.split_train, "NIH_ChestX-ray", self.label_fraction
        ).items():
            bad = next((r for r in rows if len(r) != 1 + len(FINDINGS) or set(r[1:]) - {"0", "1"}), None)
            if bad is not None:
                raise UserError(
                    f"{path}: every line should read '<png name> <14 labels 0/1>', got {' '.join(bad)!r}."
                )
            names = [Path(r[0]).name for r in rows]
            check_labels_match(names, images, path, root)
            out[split] = FileSplit(
                [images[n] / n for n in names],
                torch.as_tensor(np.asarray([r[1:] for r in rows], dtype=np.float32)),
                [patient_of(n) for n in names],
                {key: [values.get(n, "") for n in names] for key, values in meta.items()} or None,
            )
        return out


def list_subgroups(root: Path) -> dict[str, dict[str, str]]:
    """Sex and age per image name from the label file when the root holds one (the lists carry neither)."""
    label_file = next((root / f for f in LABEL_FILES if (root / f).exists()), None)
    if label_file is None:
        return {}
    table = pd.read_csv(
        label_file, usecols=lambda c: c in {"Image Index", *SUBGROUP_COLUMNS}, index_col=False, dtype=str
    )
    return {
        key: dict(zip(table["Image Index"], table[col].fillna(""), strict=True))
        for col, key in SUBGROUP_COLUMNS.items()
        if col in table and "Image Index" in table
    }
