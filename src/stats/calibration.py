"""Calibration: expected calibration error (ECE) and the bins of a reliability diagram.

Guo et al. (2017), *On calibration of modern neural networks*, ICML: 15 equal-width bins, ECE = the
case-weighted mean |accuracy - confidence| over bins. ECE itself comes from torchmetrics (the calibration of
P(class) against its observed frequency, per one-vs-rest curve); the bins below only draw the diagram.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_calibration_error

BINS = 15


def ece(score: np.ndarray, label: np.ndarray, bins: int = BINS) -> float:
    """ECE of P(positive) ``score`` against 0/1 ``label`` (torchmetrics' binary calibration error, L1)."""
    return float(
        binary_calibration_error(
            torch.as_tensor(score, dtype=torch.float64), torch.as_tensor(label).long(), n_bins=bins
        )
    )


def reliability_bins(
    score: np.ndarray, label: np.ndarray, bins: int = BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean score, observed frequency, count) per equal-width bin of ``score`` over [0, 1] (NaN where empty).
    Bins are left-closed as torchmetrics' (``bucketize(right=True)``): [0, 1/15), [1/15, 2/15), ...; a score
    of 1 joins the last."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, score, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, weights=score, minlength=bins) / count
        freq = np.bincount(which, weights=label, minlength=bins) / count
    return conf, freq, count
