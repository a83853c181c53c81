"""Test AUROC per subgroup (sex, age band, a CSV's own columns) with bootstrap CIs, and the largest gap.

The fairness view of FairMedFM-style benchmarks (Jin et al. 2024): the same model's macro AUROC within each
subgroup and the largest difference between two subgroups of one attribute. Raw attribute values come from
the datamodule (:meth:`src.data.base.ClassificationDataModule.subgroups`); here sex is normalised to F / M
and ages (years, or DICOM's ``nnnY`` / ``nnnM`` / ``nnnW`` / ``nnnD``) are cut into bands.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from src.stats.bootstrap import bootstrap_auroc, macro, percentile_ci
from src.stats.delong import per_class_auroc
from src.stats.predictions import Predictions

log = logging.getLogger(__name__)

SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}
AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMY]?)\s*$", re.IGNORECASE)
PER_YEAR = {"": 1.0, "Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
AGE_ATTRIBUTES = ("age", "patient age", "patient_age", "patientage")
# MLflow metric names allow letters, digits, '_', '-', '.', ' ' and '/'.
UNSAFE = re.compile(r"[^A-Za-z0-9_\-. ]+")


def age_years(value: str) -> float:
    match = AGE.match(value or "")
    return float(match.group(1)) / PER_YEAR[match.group(2).upper()] if match else math.nan


def age_band(years: float, edges: Sequence[float]) -> str:
    """'0-39', '40-59', ..., '80 and over' for edges (40, 60, 80); '' for an unknown age."""
    if math.isnan(years):
        return ""
    bounds = [0, *edges]
    for lo, hi in zip(bounds, [*edges, math.inf], strict=True):
        if lo <= years < hi:
            return f"{lo:g} and over" if hi == math.inf else f"{lo:g}-{hi - 1:g}"
    return ""


def normalise(attribute: str, values: Sequence[str], age_edges: Sequence[float]) -> list[str]:
    """Group label per case ('' = unknown, left out)."""
    if attribute.lower() in AGE_ATTRIBUTES:
        return [age_band(age_years(str(v)), age_edges) for v in values]
    if attribute.lower() in ("sex", "gender", "patient sex", "patient gender"):
        return [SEX.get(str(v).strip().lower(), UNSAFE.sub("_", str(v).strip())) for v in values]
    return [UNSAFE.sub("_", str(v).strip()) for v in values]


def subgroup_metrics(
    pred: Predictions,
    attributes: dict[str, Sequence[str]],
    age_edges: Sequence[float] = (40, 60, 80),
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    prefix: str = "test/subgroup",
) -> dict[str, Any]:
    """``<prefix>/<attribute>/<group>/{auroc,auroc_ci_low,auroc_ci_high,n}`` and
    ``<prefix>/<attribute>/auroc_gap`` (largest minus smallest defined subgroup AUROC)."""
    out: dict[str, Any] = {}
    _, labels, scores = pred.curves()
    for attribute, raw in attributes.items():
        if len(raw) != len(pred):
            log.warning("subgroup %s: %d values for %d cases; left out", attribute, len(raw), len(pred))
            continue
        groups = np.asarray(normalise(attribute, raw, age_edges), dtype=object)
        name = UNSAFE.sub("_", attribute.strip().lower())
        aurocs = {}
        for group in sorted({g for g in groups if g}):
            rows = np.flatnonzero(groups == group)
            point = macro(per_class_auroc(scores[rows], labels[rows]))
            boot = macro(bootstrap_auroc([scores[rows]], labels[rows], n_boot, seed)[0])
            lo, hi = percentile_ci(boot, level)
            key = f"{prefix}/{name}/{group}"
            out |= {f"{key}/auroc": float(point), f"{key}/auroc_ci_low": lo, f"{key}/auroc_ci_high": hi}
            out[f"{key}/n"] = len(rows)
            if not math.isnan(point):
                aurocs[group] = float(point)
        if len(aurocs) > 1:
            out[f"{prefix}/{name}/auroc_gap"] = max(aurocs.values()) - min(aurocs.values())
    return out
