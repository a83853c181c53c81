"""Per-run test figures: ROC curves, confusion matrix, the multilabel per-class table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.figures import confusion, per_class_table, write_figures
from src.tasks import Task

PNG = b"\x89PNG"


def test_confusion_counts_rows_true_columns_predicted() -> None:
    pred, target = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    assert confusion(pred, target, 3).tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]


@pytest.mark.parametrize("task_type", ["binary", "multiclass", "multilabel"])
def test_every_task_type_gets_its_figures(task_type: str, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    names = ("normal", "opacity") if task_type == "binary" else ("a", "b", "c")
    task = Task(task_type, names)
    if task_type == "binary":
        target = torch.randint(0, 2, (40,), generator=g)
        scores = (0.3 * target + 0.7 * torch.rand(40, generator=g)).clamp(0, 1)
    elif task_type == "multiclass":
        target = torch.randint(0, 3, (40,), generator=g)
        scores = torch.rand(40, 3, generator=g).softmax(1)
    else:
        target = torch.randint(0, 2, (40, 3), generator=g)
        scores = torch.rand(40, 3, generator=g)
    files = write_figures(scores, target, task, tmp_path)
    names_written = {p.name for p in files}
    assert {"roc_curves.png", "confusion_matrix.png", "reliability.png"} <= names_written
    assert all(p.read_bytes().startswith(PNG) for p in files if p.suffix == ".png")
    assert ("per_class_auroc.md" in names_written) == (task_type == "multilabel")


def test_per_class_table_numbers() -> None:
    task = Task("multilabel", ("a", "b"))
    target = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 1]])
    scores = torch.tensor([[0.9, 0.2], [0.4, 0.1], [0.3, 0.3], [0.6, 0.8]])
    table = per_class_table(scores, target, task)
    # a: positives score 0.9, 0.4 vs negatives 0.3, 0.6 -> 3 of 4 pairs ordered; sensitivity 1/2 at 0.5.
    assert "| a | 0.7500 | 0.500 | 0.500 | 0.500 |" in table
    # b: one positive above all negatives; prevalence 1/4.
    assert "| b | 1.0000 | 0.250 | 1.000 | 1.000 |" in table
    no_positives = per_class_table(scores, torch.zeros(4, 2, dtype=torch.int), task)
    assert "| a | nan | 0.000 |" in no_positives  # undefined, not a made-up 0.5


def test_unknown_labels_are_left_out_of_the_figures(tmp_path: Path) -> None:
    """CheXpert's ignore policy: an unknown entry (-1 after Task.metric_target) counts for no class."""
    task = Task("multilabel", ("a", "b"))
    target = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 1]])
    scores = torch.tensor([[0.9, 0.2], [0.4, 0.1], [0.3, 0.3], [0.6, 0.8]])
    extra_scores = torch.cat([scores, torch.tensor([[0.05, 0.99]])])
    unknown = torch.cat([target, torch.tensor([[-1, -1]])])
    assert per_class_table(extra_scores, unknown, task) == per_class_table(scores, target, task)
    assert len(write_figures(extra_scores, unknown, task, tmp_path)) == 4
