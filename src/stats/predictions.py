"""``predictions_<split>.csv``: one row per case of a split, in the dataset's order.

Columns: ``id`` (the file relative to the dataset root, or the index for generated / array data), then
``target:<class>`` per class (one-hot for binary and multiclass tasks; 1 / 0 for multilabel, empty where the
label is unknown), then ``score:<class>`` per class (the probabilities the metrics used; a binary task's
metrics use ``score:<class 1>``, class 1 being the positive class, and ``score:<class 0>`` is 1 minus it).
Two runs on the same split list the same ids in the same order, so :mod:`src.compare` pairs them by row.
Scores are written with 9 significant digits, which round-trips float32 exactly.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from src.atomic import atomic_write
from src.errors import UserError

TARGET, SCORE = "target:", "score:"


@dataclass
class Predictions:
    """``labels`` (n, k) 0/1 with NaN = unknown; ``scores`` (n, k)."""

    ids: list[str]
    class_names: tuple[str, ...]
    labels: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def binary(self) -> bool:
        """Two one-hot classes whose scores sum to 1 (a binary task, or a 2-class softmax): one curve, for
        class 1 (the positive class); class 0's is its mirror. Two independent multilabel scores are not."""
        if len(self.class_names) != 2 or np.isnan(self.labels).any():
            return False
        one_hot = bool(np.all(self.labels.sum(axis=1) == 1))
        return one_hot and bool(np.allclose(self.scores.sum(axis=1), 1.0, atol=1e-5))

    def curves(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, labels, scores) of the one-vs-rest curves AUROC is taken on: class 1 alone for a binary
        task, every class otherwise (the per-class AUROCs whose mean is the macro AUROC)."""
        if self.binary:
            return [self.class_names[1]], self.labels[:, 1:], self.scores[:, 1:]
        return list(self.class_names), self.labels, self.scores

    def subset(self, rows: np.ndarray) -> Predictions:
        return Predictions(
            [self.ids[i] for i in rows], self.class_names, self.labels[rows], self.scores[rows]
        )


def from_task(
    ids: Sequence[str], scores: Tensor, target: Tensor, task_type: str, class_names: Sequence[str]
) -> Predictions:
    """From the module's (scores, metric target) in the task's form (see :class:`src.tasks.Task`)."""
    s = scores.double().numpy()
    t = target.numpy()
    k = len(class_names)
    if task_type == "binary":
        s = s.reshape(-1)  # P(class 1), whichever head (2-way softmax or one sigmoid logit) produced it
        s = np.stack([1.0 - s, s], axis=1)
    if task_type in ("binary", "multiclass"):
        labels = np.eye(k)[t.astype(np.int64)]
    else:
        labels = np.where(t < 0, np.nan, t).astype(np.float64)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} sample ids for {len(labels)} predictions")
    return Predictions(list(ids), tuple(class_names), labels, s)


def label_cell(v: float) -> str:
    return "" if math.isnan(v) else str(int(v))


def write_predictions(pred: Predictions, path: Path, scores: bool = True) -> Path:
    """The CSV above (``scores=False``: ids and targets only, as in ``splits/*.csv``)."""
    header = ["id", *(TARGET + c for c in pred.class_names)]
    if scores:
        header += [SCORE + c for c in pred.class_names]
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, sample in enumerate(pred.ids):
            row = [sample, *map(label_cell, pred.labels[i])]
            if scores:
                row += [f"{v:.9g}" for v in pred.scores[i]]
            writer.writerow(row)
    return path


def read_predictions(path: Path) -> Predictions:
    """Read the CSV above; a short :class:`UserError` naming the file for anything else."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise UserError(f"cannot read predictions {path}: {err}") from None
    if not rows or not rows[0] or rows[0][0] != "id":
        raise UserError(f"{path} is not a predictions file: its header should start with id, target:<class>.")
    header = rows[0]
    targets = [h.removeprefix(TARGET) for h in header if h.startswith(TARGET)]
    scores = [h.removeprefix(SCORE) for h in header if h.startswith(SCORE)]
    if (
        not targets
        or targets != scores
        or header != ["id", *(TARGET + c for c in targets), *(SCORE + c for c in scores)]
    ):
        raise UserError(
            f"{path}: columns should be id, target:<class>..., score:<class>... for the same classes "
            f"(got {header[:6]}...)."
        )
    k = len(targets)
    try:
        labels = np.array(
            [[float(v) if v != "" else np.nan for v in r[1 : 1 + k]] for r in rows[1:]]
        ).reshape(-1, k)
        values = np.array([[float(v) for v in r[1 + k : 1 + 2 * k]] for r in rows[1:]]).reshape(-1, k)
    except (ValueError, IndexError) as err:
        raise UserError(f"{path}: a row does not hold {k} targets and {k} scores ({err}).") from None
    return Predictions([r[0] for r in rows[1:]], tuple(targets), labels, values)
