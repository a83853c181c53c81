"""Your own images listed in a CSV file: one row per image, a path column and label column(s).

    path,label[,split][,patient][,sex,...]  one label column: its values are the classes
    path,effusion,nodule,...[,split]        several label columns: multilabel, 1 / 0 each

Image paths are relative to ``dataset.root`` when it is set, else to the CSV's folder (absolute paths are
taken as they are). With ``dataset.split_column`` its values (train / val / test) are the split; splits
it lacks are carved from train in the proportions of ``dataset.split_fractions``, seeded and stratified,
keeping each ``dataset.group_column`` value (a patient id) on one side. ``dataset.group_columns`` (e.g.
``[sex, age]``) name columns of subgroup attributes: test AUROC is reported per value (a column named ``age``
in age bands), see README "Statistics".
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from src.data.files import SPLIT_NAMES, FileDataModule, FileSplit, check_labels_match, complete_splits
from src.errors import UserError

LAYOUT = "a CSV (dataset.csv) with a path column and label column(s); image paths relative to dataset.root"
TRUE, FALSE = ("1", "1.0", "true", "yes"), ("0", "0.0", "false", "no")


class CSVDataModule(FileDataModule):
    LAYOUT = LAYOUT

    def __init__(
        self,
        csv: str | None = None,
        path_column: str = "path",
        label_columns: Sequence[str] = ("label",),
        split_column: str | None = None,
        group_column: str | None = None,
        group_columns: Sequence[str] = (),
        class_names: Sequence[str] | None = None,
        seed: int = 42,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        root: str | None = None,
        **kwargs,
    ) -> None:
        table = Path(csv or "").expanduser()
        if csv and not table.is_absolute() and root is not None:
            table = Path(root).expanduser() / table
        label_columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
        multilabel = len(label_columns) > 1
        super().__init__(
            task="multilabel" if multilabel else "multiclass",
            class_names=label_columns if multilabel else class_names or (),
            root=root if root is not None or not csv else str(table.parent),
            **kwargs,
        )
        self.csv, self.table, self.path_column, self.label_columns = csv, table, path_column, label_columns
        self.split_column, self.group_column = split_column, group_column
        self.group_columns = [group_columns] if isinstance(group_columns, str) else list(group_columns or ())
        self.seed, self.split_fractions = seed, tuple(split_fractions)

    def check(self) -> None:
        if not self.csv:
            raise UserError("dataset.csv is not set: pass dataset.csv=/path/to/labels.csv.")
        if not self.label_columns:
            raise UserError("dataset.label_columns is empty: name the column(s) holding the labels.")
        super().check()

    def read_rows(self) -> list[dict[str, str]]:
        self.require(self.table, "label file (dataset.csv)")
        with open(self.table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
        columns = [
            self.path_column,
            *self.label_columns,
            self.split_column,
            self.group_column,
            *self.group_columns,
        ]
        absent = [c for c in columns if c and c not in header]
        if absent:
            raise UserError(
                f"{self.table} has no column(s) {absent} (its columns: {header}). Set dataset.path_column, "
                "dataset.label_columns, dataset.split_column or dataset.group_column to its column names."
            )
        if not rows:
            raise UserError(f"{self.table} has no rows.")
        return rows

    def targets(self, rows: list[dict[str, str]]) -> torch.Tensor:
        if self.task_type == "multilabel":
            return torch.as_tensor(np.array([[self.flag(r, c) for c in self.label_columns] for r in rows]))
        values = [r[self.label_columns[0]].strip() for r in rows]
        names = self.class_names or sorted(set(values), key=number_first)
        if len(names) < 2:
            raise UserError(f"column {self.label_columns[0]} of {self.table} has {len(names)} class(es).")
        unknown = sorted(set(values) - {str(n) for n in names})
        if unknown:
            raise UserError(
                f"column {self.label_columns[0]} of {self.table} holds {unknown[:5]}, not in "
                f"dataset.class_names={list(names)}."
            )
        self.class_names = tuple(str(n) for n in names)
        self.task_type = "binary" if len(names) == 2 else "multiclass"
        return torch.as_tensor([self.class_names.index(v) for v in values], dtype=torch.int64)

    def flag(self, row: dict[str, str], column: str) -> np.float32:
        value = row[column].strip().lower()
        if value in TRUE or value in FALSE:
            return np.float32(value in TRUE)
        raise UserError(
            f"{self.table}, column {column}, row {row[self.path_column]}: {row[column]!r} is not 1 or 0. "
            "Several dataset.label_columns make a multilabel task with one 0/1 column per finding."
        )

    def split_of(self, row: dict[str, str]) -> str:
        value = row[self.split_column].strip().lower()
        for split, names in SPLIT_NAMES.items():
            if value in names:
                return split
        raise UserError(
            f"{self.table}, column {self.split_column}, row {row[self.path_column]}: {row[self.split_column]!r} "
            "is not train, val or test."
        )

    def index(self, root: Path) -> dict[str, FileSplit]:
        rows = self.read_rows()
        names = [r[self.path_column].strip() for r in rows]
        paths = [root / name for name in names]
        found = [name for name, p in zip(names, paths, strict=True) if p.is_file()]
        check_labels_match(names, found, self.table, root)
        everything = FileSplit(
            paths,
            self.targets(rows),
            [r[self.group_column] for r in rows] if self.group_column else None,
            {c: [r[c].strip() for r in rows] for c in self.group_columns} or None,
        )
        if not self.split_column:
            return complete_splits({"train": everything}, self.split_fractions, self.seed)
        split = [self.split_of(r) for r in rows]
        parts = {
            s: everything.subset([i for i, x in enumerate(split) if x == s])
            for s in SPLIT_NAMES
            if s in split
        }
        if "train" not in parts:
            raise UserError(f"column {self.split_column} of {self.table} marks no row as train.")
        return complete_splits(parts, self.split_fractions, self.seed)


def number_first(value: str) -> tuple[int, float, str]:
    """Sort key: integer class labels numerically (2 before 10), then names alphabetically."""
    try:
        return 0, int(value), ""
    except ValueError:
        return 1, 0, value
