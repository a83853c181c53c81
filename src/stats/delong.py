"""AUROC and the paired DeLong test, in the fast midrank form.

DeLong, DeLong & Clarke-Pearson (1988), *Comparing the areas under two or more correlated receiver
operating characteristic curves: a nonparametric approach*, Biometrics 44:837-845: the AUROC is the
Mann-Whitney statistic, its variance comes from the structural components V10 (per positive) and V01 (per
negative), and two AUROCs measured on the same cases have a covariance from the same components.
Sun & Xu (2014), *Fast implementation of DeLong's algorithm for comparing the areas under correlated
receiver operating characteristic curves*, IEEE Signal Processing Letters 21:1389-1393: the components are
differences of midranks, so everything costs three sorts (O(n log n)) instead of the m·n comparisons.

Ties count one half, as in the Mann-Whitney statistic (and torchmetrics / scikit-learn's AUROC).
Kept here rather than taken from a library: neither torchmetrics nor scikit-learn offers the DeLong test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def sorted_midranks(values: np.ndarray) -> np.ndarray:
    """1-based midranks of already ascending ``values``: tied values share the mean of their ranks."""
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    counts = np.diff(np.r_[starts, len(values)])
    return np.repeat(starts + (counts + 1) / 2.0, counts)


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = sorted_midranks(x[order])
    return ranks


def _components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUROC, V10 per positive, V01 per negative) of one score vector (Sun & Xu 2014, Algorithm 1). Their
    three midrank passes share one sort: positives and negatives keep their order within the joint one."""
    m, n = len(pos), len(neg)
    joint = np.concatenate([pos, neg])
    order = np.argsort(joint, kind="stable")
    ordered = joint[order]
    tz = np.empty(m + n)
    tz[order] = sorted_midranks(ordered)
    is_pos = order < m
    tx, ty = np.empty(m), np.empty(n)
    tx[order[is_pos]] = sorted_midranks(ordered[is_pos])
    ty[order[~is_pos] - m] = sorted_midranks(ordered[~is_pos])
    auc = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return float(auc), v10, v01


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """AUROC of ``score`` for 0/1 ``label``; NaN when one side is empty (AUROC undefined)."""
    label = np.asarray(label).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if label.all() or not label.any():
        return math.nan
    return _components(score[label], score[~label])[0]


def per_class_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(k,) AUROC of every column of (n, k) ``scores`` against (n, k) 0/1 ``labels``, NaN labels left out."""
    out = np.full(labels.shape[1], math.nan)
    for c in range(labels.shape[1]):
        known = ~np.isnan(labels[:, c])
        out[c] = auroc(scores[known, c], labels[known, c])
    return out


@dataclass(frozen=True)
class DeLongResult:
    auroc_a: float
    auroc_b: float
    delta: float  # auroc_b - auroc_a
    se: float  # standard error of delta
    p: float  # two-sided


def normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def delong_test(score_a: np.ndarray, score_b: np.ndarray, label: np.ndarray) -> DeLongResult:
    """Paired DeLong test of AUROC(b) - AUROC(a) on the same cases; p = 1 when the difference and its
    variance are both zero (identical rankings), NaN when one side of ``label`` is empty."""
    label = np.asarray(label).astype(bool)
    if label.all() or not label.any():
        return DeLongResult(math.nan, math.nan, math.nan, math.nan, math.nan)
    a, b = np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)
    auc_a, v10a, v01a = _components(a[label], a[~label])
    auc_b, v10b, v01b = _components(b[label], b[~label])
    m, n = len(v10a), len(v01a)
    s10 = np.cov(np.stack([v10a, v10b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.stack([v01a, v01b])) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    delta = auc_b - auc_a
    if var <= 1e-15:  # the two rankings agree on every (positive, negative) pair that matters
        return DeLongResult(auc_a, auc_b, delta, 0.0, 1.0 if abs(delta) < 1e-12 else 0.0)
    se = math.sqrt(var)
    return DeLongResult(auc_a, auc_b, delta, se, normal_two_sided_p(delta / se))


def delong_variance(score: np.ndarray, label: np.ndarray) -> float:
    """DeLong's variance of one AUROC (NaN when undefined)."""
    label = np.asarray(label).astype(bool)
    if label.all() or not label.any():
        return math.nan
    s = np.asarray(score, np.float64)
    _, v10, v01 = _components(s[label], s[~label])
    m, n = len(v10), len(v01)
    return float((v10.var(ddof=1) if m > 1 else 0.0) / m + (v01.var(ddof=1) if n > 1 else 0.0) / n)
