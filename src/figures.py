"""A run's test-set figures, logged as MLflow artifacts: ROC curves per class (with a 95 % bootstrap band),
the confusion matrix, a reliability diagram and, for multilabel tasks, a per-class table (AUROC, prevalence,
sensitivity / specificity at 0.5).

Binary tasks have one curve, for the positive class (the other is its mirror image); multiclass curves are
one-vs-rest; multilabel curves are per label. The decision rule of the confusion matrix is the one the
metrics use: P(positive) >= 0.5 for binary and for each label, the arg-max for multiclass.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_roc

from src.atomic import atomic_write
from src.stats.bootstrap import roc_band
from src.stats.calibration import reliability_bins
from src.tasks import Task

THRESHOLD = 0.5
# Resamples behind the ROC band (a drawing: fewer than the CIs' stats.n_boot, same seeded scheme).
BAND_RESAMPLES = 500


def label_column(scores: Tensor, target: Tensor, c: int) -> tuple[Tensor, Tensor]:
    """Label ``c`` of a multilabel task, without the rows whose label is unknown (CheXpert ``ignore``)."""
    known = target[:, c] >= 0
    return scores[known, c], target[known, c]


def one_vs_rest(scores: Tensor, target: Tensor, task: Task) -> list[tuple[str, Tensor, Tensor]]:
    """(class name, score of that class, 0/1 target) for every curve to draw."""
    if task.type == "binary":
        return [(task.class_names[1], scores, target)]
    if task.type == "multiclass":
        return [(name, scores[:, c], (target == c).int()) for c, name in enumerate(task.class_names)]
    return [(name, *label_column(scores, target, c)) for c, name in enumerate(task.class_names)]


def class_auroc(score: Tensor, target: Tensor) -> float:
    """NaN where the test split holds one side only (no positives, or no negatives): AUROC is undefined."""
    if target.numel() == 0 or target.min() == target.max():
        return math.nan
    return float(binary_auroc(score.float(), target))


def roc_figure(curves: list[tuple[str, Tensor, Tensor]]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, score, target in curves:
        auc = class_auroc(score, target)
        if math.isnan(auc):
            ax.plot([], [], label=f"{name} (one class only in test)")
            continue
        fpr, tpr, _ = binary_roc(score.float(), target)
        line = ax.plot(fpr.numpy(), tpr.numpy(), label=f"{name} (AUROC {auc:.3f})")[0]
        grid, lo, hi = roc_band(score.double().numpy(), target.numpy(), n_boot=BAND_RESAMPLES)
        ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0, step="post")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    unit_square(ax, "false positive rate", "true positive rate", "test ROC (bands: 95 % bootstrap)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def unit_square(ax: plt.Axes, xlabel: str, ylabel: str, title: str) -> None:
    """Both axes 0..1 (rates, probabilities), labelled."""
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1))


def reliability_figure(curves: list[tuple[str, Tensor, Tensor]]) -> plt.Figure:
    """Observed frequency against mean predicted probability per bin, one line per curve (binary: the
    positive class; multiclass: one-vs-rest; multilabel: per label); marker area ~ cases in the bin."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, score, target in curves:
        if target.numel() == 0:
            continue
        conf, freq, count = reliability_bins(score.double().numpy(), target.double().numpy())
        filled = count > 0
        line = ax.plot(conf[filled], freq[filled], marker="o", markersize=3, label=name)[0]
        ax.scatter(
            conf[filled], freq[filled], s=200 * count[filled] / count.sum(), color=line.get_color(), alpha=0.3
        )
    unit_square(ax, "mean predicted probability", "observed frequency", "test reliability")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def confusion(pred: Tensor, target: Tensor, n: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    return torch.bincount(target.long() * n + pred.long(), minlength=n * n).reshape(n, n).numpy()


def draw_matrix(ax: plt.Axes, matrix: np.ndarray, labels: list[str], title: str) -> None:
    rows = matrix.sum(axis=1, keepdims=True)
    ax.imshow(matrix / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        share = count / max(rows[i, 0], 1)
        ax.text(
            j, i, f"{count}\n{share:.0%}", ha="center", va="center", color="white" if share > 0.6 else "black"
        )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def confusion_figure(scores: Tensor, target: Tensor, task: Task) -> plt.Figure:
    if task.type == "multilabel":
        n = task.num_classes
        fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
        for c, name in enumerate(task.class_names):
            score, t = label_column(scores, target, c)
            matrix = confusion((score >= THRESHOLD).int(), t, 2)
            draw_matrix(axes[0][c], matrix, ["absent", "present"], name)
    else:
        pred = (scores >= THRESHOLD).int() if task.type == "binary" else scores.argmax(dim=1)
        n = task.num_classes
        fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2))
        draw_matrix(ax, confusion(pred, target, n), list(task.class_names), "test confusion matrix")
    fig.tight_layout()
    return fig


def per_class_table(scores: Tensor, target: Tensor, task: Task) -> str:
    """Markdown: one row per label, the numbers a clinician reads first."""
    lines = ["| class | AUROC | prevalence | sensitivity | specificity |", "|---|---|---|---|---|"]
    for c, name in enumerate(task.class_names):
        score, t = label_column(scores, target, c)
        t = t.bool()
        pred = score >= THRESHOLD
        sens = (pred & t).sum() / max(int(t.sum()), 1)
        spec = (~pred & ~t).sum() / max(int((~t).sum()), 1)
        lines.append(
            f"| {name} | {class_auroc(score, t.int()):.4f} | {float(t.float().mean()):.3f} "
            f"| {float(sens):.3f} | {float(spec):.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_figures(scores: Tensor, target: Tensor, task: Task, out: Path) -> list[Path]:
    """Write the figures under ``out/figures``; returns the files written."""
    out = out / "figures"
    written: list[Path] = []
    for name, fig in (
        ("roc_curves.png", roc_figure(one_vs_rest(scores, target, task))),
        ("confusion_matrix.png", confusion_figure(scores, target, task)),
        ("reliability.png", reliability_figure(one_vs_rest(scores, target, task))),
    ):
        with atomic_write(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out / name)
    if task.type == "multilabel":
        with atomic_write(out / "per_class_auroc.md") as tmp:
            tmp.write_text(per_class_table(scores, target, task))
        written.append(out / "per_class_auroc.md")
    return written
