"""Task types: what the head outputs, which loss trains it and which metrics judge it.

* ``binary``: two logits and softmax cross-entropy (as MeLo's two-class heads); metrics on P(class 1). With
  ``binary_head="sigmoid"`` (``task.binary_head``): one logit and BCE-with-logits, as MED-PEFT trains RSNA
  pneumonia (its loss is BCE for every dataset); P(class 1) is the sigmoid of that logit.
* ``multiclass``: C logits, cross-entropy, optional label smoothing.
* ``multilabel``: C independent logits, BCE-with-logits (as MED-PEFT on NIH / CheXpert). A NaN target marks
  a label as unknown (CheXpert's uncertain findings under ``dataset.uncertainty=ignore``): it is left out of
  the loss (mean over the known entries) and of every metric.

AUROC is macro-averaged over classes (per class too for multilabel); the best checkpoint is picked on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelF1Score,
)

from src.errors import UserError

TaskType = Literal["binary", "multiclass", "multilabel"]
TASK_TYPES: tuple[str, ...] = ("binary", "multiclass", "multilabel")
BINARY_HEADS = ("softmax", "sigmoid")
# The integer that unknown (NaN) multilabel targets become for the metrics, which skip it.
IGNORE_INDEX = -1


@dataclass(frozen=True)
class Task:
    """A classification task: its type, class names and loss options."""

    type: TaskType
    class_names: tuple[str, ...]
    label_smoothing: float = 0.0
    binary_head: str = "softmax"

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise UserError(f"task type {self.type!r} is unknown; choose one of {', '.join(TASK_TYPES)}.")
        if self.type == "binary" and len(self.class_names) != 2:
            raise UserError(f"a binary task needs exactly 2 class names, got {list(self.class_names)}.")
        if len(self.class_names) < 2 and self.type == "multiclass":
            raise UserError(f"a multiclass task needs at least 2 classes, got {list(self.class_names)}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"label_smoothing={self.label_smoothing} must lie in [0, 1).")
        if self.binary_head not in BINARY_HEADS:
            raise UserError(
                f"task.binary_head={self.binary_head!r} must be softmax (2 logits) or sigmoid (1 logit)."
            )
        if self.single_logit and self.label_smoothing:
            raise UserError(
                f"loss.label_smoothing={self.label_smoothing} applies to softmax cross-entropy; with "
                "task.binary_head=sigmoid set loss.label_smoothing=0."
            )

    @property
    def single_logit(self) -> bool:
        """A binary task trained as one sigmoid logit (``task.binary_head=sigmoid``)."""
        return self.type == "binary" and self.binary_head == "sigmoid"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_outputs(self) -> int:
        """Width of the classification head."""
        return 1 if self.single_logit else self.num_classes

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.type == "multilabel":
            known = ~target.isnan()
            total = F.binary_cross_entropy_with_logits(
                logits, target.float().nan_to_num(0.0), weight=known.float(), reduction="sum"
            )
            return total / known.sum().clamp(min=1)
        if self.single_logit:
            return F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def metric_target(self, target: Tensor) -> Tensor:
        """Integer targets for the metrics; unknown multilabel entries (NaN) become ``IGNORE_INDEX``."""
        if self.type == "multilabel":
            return target.nan_to_num(IGNORE_INDEX).int()
        return target.int()

    def scores(self, logits: Tensor) -> Tensor:
        """Probabilities in the form the metrics expect: P(positive) for binary, else one per class."""
        logits = logits.float()
        if self.single_logit:
            return logits[:, 0].sigmoid()
        if self.type == "binary":
            return logits.softmax(dim=-1)[:, 1]
        if self.type == "multiclass":
            return logits.softmax(dim=-1)
        return logits.sigmoid()

    def probabilities(self, logits: Tensor) -> Tensor:
        """One probability per class name (N x C), as src.predict writes them."""
        if self.single_logit:
            positive = logits.float()[:, 0].sigmoid()
            return torch.stack([1 - positive, positive], dim=1)
        return logits.float().sigmoid() if self.type == "multilabel" else logits.float().softmax(-1)

    def metrics(self) -> MetricCollection:
        """Fresh torchmetrics for one stage (train / val / test)."""
        c = self.num_classes
        table: dict[str, Metric]
        if self.type == "binary":
            table = {
                "auroc": BinaryAUROC(),
                "acc": BinaryAccuracy(),
                "f1": BinaryF1Score(),
                "sensitivity": BinaryRecall(),
                "specificity": BinarySpecificity(),
            }
        elif self.type == "multiclass":
            table = {
                "auroc": MulticlassAUROC(num_classes=c, average="macro"),
                "acc": MulticlassAccuracy(num_classes=c, average="micro"),
                "f1": MulticlassF1Score(num_classes=c, average="macro"),
            }
        else:
            table = {
                "auroc": MultilabelAUROC(num_labels=c, average="macro", ignore_index=IGNORE_INDEX),
                "auroc_per_class": MultilabelAUROC(num_labels=c, average="none", ignore_index=IGNORE_INDEX),
                "acc": MultilabelAccuracy(num_labels=c, average="micro", ignore_index=IGNORE_INDEX),
                "f1": MultilabelF1Score(num_labels=c, average="macro", ignore_index=IGNORE_INDEX),
            }
        return MetricCollection(table)

    def expand(self, computed: dict[str, Tensor], prefix: str) -> dict[str, float]:
        """Turn computed metrics into loggable scalars; per-class vectors become ``auroc/<class>``."""
        out: dict[str, float] = {}
        for name, value in computed.items():
            if value.ndim == 0:
                out[f"{prefix}/{name}"] = float(value)
                continue
            base = name.removesuffix("_per_class")
            for cls, v in zip(self.class_names, value.tolist(), strict=True):
                out[f"{prefix}/{base}/{cls}"] = float(v)
        return out


def make_target(task_type: str, labels: list[int] | list[list[int]]) -> Tensor:
    """Label tensor in the dtype the loss expects: int64 class indices, or float multi-hot rows."""
    if task_type == "multilabel":
        return torch.as_tensor(labels, dtype=torch.float32)
    return torch.as_tensor(labels, dtype=torch.int64)
