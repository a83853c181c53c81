"""What a finished run records for the statistics: splits, predictions and the numbers derived from them.

Called once by ``src.train`` (rank 0, after testing) and ``src.eval``:

* ``splits/{train,val,test}.csv``: every case of each split (id and labels), so a table cell can be traced
  to the exact images;
* ``predictions_test.csv`` and ``predictions_val.csv`` (format in :mod:`src.stats.predictions`);
* metrics.json / MLflow entries: the bootstrap CI of test AUROC (macro and per class), the operating point
  chosen on val (``task.operating_point``) with test sensitivity / specificity / PPV / NPV and their Wilson
  intervals, ECE, and AUROC per subgroup where the dataset carries subgroup attributes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from src.data.base import SPLITS, ClassificationDataModule
from src.errors import UserError
from src.stats.bootstrap import bootstrap_auroc, macro, percentile_ci
from src.stats.calibration import ece
from src.stats.delong import per_class_auroc
from src.stats.operating import at_threshold, check_rule, choose_threshold
from src.stats.predictions import Predictions, from_task, write_predictions
from src.stats.subgroups import subgroup_metrics
from src.tasks import Task

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {"n_boot": 2000, "seed": 0, "ci": 0.95, "age_bands": [40, 60, 80]}


def stats_options(cfg: DictConfig) -> dict[str, Any]:
    """``stats.*`` with defaults (older runs' config.yaml lack the block) and ``task.operating_point``."""
    options = {**DEFAULTS, **dict(cfg.get("stats") or {})}
    options["operating_point"] = check_rule((cfg.get("task") or {}).get("operating_point", "youden"))
    n_boot = options["n_boot"]
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise UserError(
            f"stats.n_boot={n_boot!r} must be a positive number of bootstrap resamples (e.g. 2000)."
        )
    level = options["ci"]
    if isinstance(level, bool) or not isinstance(level, float) or not 0 < level < 1:
        raise UserError(f"stats.ci={level!r} must be a coverage in (0, 1), e.g. 0.95.")
    return options


def split_predictions(
    datamodule: ClassificationDataModule, split: str, kept: tuple[Tensor, Tensor] | None, task: Task
) -> Predictions | None:
    """The module's (scores, target) of ``split`` with the datamodule's ids; None when there are none."""
    if kept is None:
        return None
    ids = datamodule.sample_ids(split)
    n = len(kept[0])
    if ids is None or n > len(ids):
        log.warning(
            "%s predictions: %d rows for %s ids; predictions_%s.csv not written",
            split,
            n,
            ids and len(ids),
            split,
        )
        return None
    if n < len(ids):  # trainer.limit_*_batches: the loaders are sequential, so these are the first n cases
        log.warning("%s split limited to its first %d of %d cases", split, n, len(ids))
    expected = datamodule.split_targets(split)
    if expected is not None and not torch.equal(task.metric_target(expected[:n]).long(), kept[1].long()):
        # Scores paired with the wrong ids would be a silent error in every statistic built on them.
        log.error(
            "%s predictions are not in the dataset's order (their labels differ from the split's); "
            "predictions_%s.csv and the statistics are not written",
            split,
            split,
        )
        return None
    return from_task(ids[:n], *kept, task.type, task.class_names)


def write_splits(datamodule: ClassificationDataModule, task: Task, out: Path) -> list[Path]:
    """``splits/<split>.csv``: id and labels of every case (an unbounded stream has no file)."""
    written = []
    for split in SPLITS:
        ids, targets = datamodule.sample_ids(split), datamodule.split_targets(split)
        if ids is None or targets is None:
            log.info("split %s is a stream: no splits/%s.csv", split, split)
            continue
        target = task.metric_target(targets) if task.type == "multilabel" else targets
        k = task.num_classes
        dummy = torch.zeros(len(ids) if task.type == "binary" else (len(ids), k))
        pred = from_task(ids, dummy, target, task.type, task.class_names)
        written.append(write_predictions(pred, out / "splits" / f"{split}.csv", scores=False))
    return written


def auroc_intervals(pred: Predictions, n_boot: int, seed: int, level: float) -> dict[str, float]:
    """Point AUROC and the bootstrap CI, macro (``test/auroc_ci_low``) and per class (``.../<class>``)."""
    names, labels, scores = pred.curves()
    boot = bootstrap_auroc([scores], labels, n_boot, seed)[0]
    point = per_class_auroc(scores, labels)
    out: dict[str, float] = {}
    lo, hi = percentile_ci(macro(boot), level)
    out |= {"test/auroc_ci_low": lo, "test/auroc_ci_high": hi}
    if len(names) > 1:
        for c, name in enumerate(names):
            lo, hi = percentile_ci(boot[:, c], level)
            out |= {f"test/auroc_ci_low/{name}": lo, f"test/auroc_ci_high/{name}": hi}
            out[f"test/auroc/{name}"] = float(point[c])  # multilabel: torchmetrics' own value wins
    undefined = [n for n, p in zip(names, point, strict=True) if math.isnan(p)]
    if undefined:
        log.warning("test AUROC undefined (one side only) for %s: left out of the macro CI", undefined)
    return out


def suffix(name: str, many: bool) -> str:
    return f"/{name}" if many else ""


def operating_points(val: Predictions | None, test: Predictions, rule: str) -> dict[str, float]:
    """Threshold per curve chosen on val by ``rule``; sensitivity / specificity / PPV / NPV on test."""
    if val is None:
        log.info("no validation predictions: no operating point")
        return {}
    names, val_labels, val_scores = val.curves()
    _, labels, scores = test.curves()
    out: dict[str, float] = {}
    for c, name in enumerate(names):
        s = suffix(name, len(names) > 1)
        known_val, known = ~np.isnan(val_labels[:, c]), ~np.isnan(labels[:, c])
        threshold = choose_threshold(val_scores[known_val, c], val_labels[known_val, c], rule)
        out[f"val/op_threshold{s}"] = threshold
        if math.isnan(threshold):
            continue
        for metric, (p, lo, hi) in at_threshold(scores[known, c], labels[known, c], threshold).items():
            out |= {
                f"test/op_{metric}{s}": p,
                f"test/op_{metric}_ci_low{s}": lo,
                f"test/op_{metric}_ci_high{s}": hi,
            }
    return out


def calibration(test: Predictions) -> dict[str, float]:
    """ECE per one-vs-rest curve (P(class) against its frequency) and their mean as ``test/ece``."""
    names, labels, scores = test.curves()
    values = []
    out: dict[str, float] = {}
    for c, name in enumerate(names):
        known = ~np.isnan(labels[:, c])
        if not known.any():
            continue
        values.append(ece(scores[known, c], labels[known, c]))
        if len(names) > 1:
            out[f"test/ece/{name}"] = values[-1]
    out["test/ece"] = float(np.mean(values))
    return out


def run_statistics(
    cfg: DictConfig,
    datamodule: ClassificationDataModule,
    task: Task,
    test: tuple[Tensor, Tensor] | None,
    val: tuple[Tensor, Tensor] | None,
    out: Path,
) -> tuple[dict[str, float], list[Path]]:
    """Write the predictions files; return the statistics for metrics.json and the files written."""
    options = stats_options(cfg)
    test_pred = split_predictions(datamodule, "test", test, task)
    if test_pred is None:
        return {}, []
    files = [write_predictions(test_pred, out / "predictions_test.csv")]
    val_pred = split_predictions(datamodule, "val", val, task)
    if val_pred is not None:
        files.append(write_predictions(val_pred, out / "predictions_val.csv"))
    n_boot, seed, level = options["n_boot"], options["seed"], options["ci"]
    metrics = auroc_intervals(test_pred, n_boot, seed, level)
    metrics |= operating_points(val_pred, test_pred, options["operating_point"])
    metrics |= calibration(test_pred)
    groups = datamodule.subgroups("test")
    if groups:
        n = len(test_pred)
        groups = {k: v[:n] for k, v in groups.items()}
        metrics |= subgroup_metrics(test_pred, groups, options["age_bands"], n_boot, seed, level)
    return metrics, files


def loggable(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` (MLflow takes numbers only)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
