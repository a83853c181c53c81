"""The paired case bootstrap of AUROC, vectorised over resamples.

Every resample draws cases with replacement — within each class for single-label tasks (stratified, so
each resample keeps the test split's class counts), whole cases for multilabel tasks (one case carries all
its labels, so the classes and their macro average stay paired) — and the *same* draws serve every run
being compared (paired). A resample is a vector of case multiplicities, and the AUROC of a weighted sample
is the weighted Mann-Whitney statistic: for each positive, the weight of the negatives scored below it
(ties count one half). Sorting the cases by score once per class and run, that weight is a prefix sum of
the multiplicities in score order, taken for all resamples at once; no resample is ever sorted.

Kept here rather than calling a library per resample: the per-resample loop with torchmetrics is what
``bench/bench_stats.py`` measures this against.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

# Resamples drawn and scored together: bounds memory ((cases, CHUNK) counts); part of the seeded stream, so
# changing it changes the draws.
CHUNK = 250


def resample_indices(strata: np.ndarray | None, n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of (b, n) case indices, b <= CHUNK, n_boot rows in all. ``strata`` (n,) ints: each resample
    draws, within every stratum, as many cases as the stratum holds; ``None``: one stratum."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    for start in range(0, n_boot, CHUNK):
        b = min(CHUNK, n_boot - start)
        parts = [g[rng.integers(0, len(g), size=(b, len(g)), dtype=np.int32)] for g in groups if len(g)]
        yield np.concatenate(parts, axis=1)


def multiplicities(indices: np.ndarray, n: int) -> np.ndarray:
    """(n, b) count of every case in each of the b resamples of ``indices`` (b, k)."""
    rows = np.empty((len(indices), n), dtype=np.int32)
    for i, drawn in enumerate(indices):  # row by row: one bincount's bins stay in cache
        rows[i] = np.bincount(drawn, minlength=n)
    # Cases x resamples, so that gathering cases in score order copies contiguous rows; 16 bits halve the
    # memory traffic of the gathers (a case drawn 65,536 times in one resample never happens in practice).
    dtype = np.uint16 if rows.max(initial=0) <= np.iinfo(np.uint16).max else np.int32
    return np.ascontiguousarray(rows.T, dtype=dtype)


class _Curve:
    """One (run, class): the cases' order by score, precomputed once for all resamples."""

    def __init__(self, score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
        order = np.argsort(score[neg], kind="stable")
        self.neg = neg[order]
        neg_scores = score[self.neg]
        self.pos = pos
        lo = np.searchsorted(neg_scores, score[pos], side="left")  # negatives strictly below
        hi = np.searchsorted(neg_scores, score[pos], side="right")  # ... or tied
        n = len(neg)
        # Prefix sums are needed only where a positive falls: sum the multiplicities segment by segment.
        cuts = np.unique(np.concatenate([lo, hi]))
        self.starts = np.concatenate([[0], cuts[(cuts > 0) & (cuts < n)]])
        ends = np.concatenate([self.starts, [n]])  # prefix sum before each start, then the total
        self.lo, self.hi = np.searchsorted(ends, lo), np.searchsorted(ends, hi)

    def auroc(self, counts: np.ndarray) -> np.ndarray:
        """(b,) AUROC of every resample given (cases, b) multiplicities; NaN where a side was not drawn."""
        segments = np.add.reduceat(counts[self.neg], self.starts, axis=0, dtype=np.int32)
        prefix = np.zeros((len(segments) + 1, counts.shape[1]), dtype=np.int64)
        np.cumsum(segments, axis=0, out=prefix[1:], dtype=np.int64)
        wp = counts[self.pos]
        num = np.einsum("pb,pb->b", wp, prefix[self.lo] + prefix[self.hi], dtype=np.float64) / 2.0
        den = wp.sum(axis=0, dtype=np.float64) * prefix[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), math.nan)


def single_label_strata(labels: np.ndarray) -> np.ndarray | None:
    """Class index per case for single-label tasks — (n, k) one-hot, or the one 0/1 column of a binary
    task's positive class — with nothing unknown; else None (multilabel: whole cases)."""
    if np.isnan(labels).any():
        return None
    if labels.shape[1] == 1:
        return labels[:, 0].astype(np.int64)
    if not np.all(labels.sum(axis=1) == 1):
        return None
    return labels.argmax(axis=1)


def bootstrap_auroc(
    scores: Sequence[np.ndarray],
    labels: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    strata: np.ndarray | str | None = "auto",
) -> np.ndarray:
    """(runs, n_boot, k) AUROC of every run's (n, k) ``scores`` against (n, k) 0/1 ``labels`` (NaN =
    unknown, left out) in each paired resample. ``strata="auto"``: by class for binary / multiclass labels
    (:func:`single_label_strata`), whole cases otherwise (multilabel)."""
    labels = np.asarray(labels, dtype=np.float64)
    n, k = labels.shape
    if isinstance(strata, str):
        strata = single_label_strata(labels)
    curves: list[list[_Curve | None]] = []
    for score in scores:
        score = np.asarray(score, dtype=np.float64)
        if score.shape != labels.shape:
            raise ValueError(f"scores {score.shape} and labels {labels.shape} differ in shape")
        row = []
        for c in range(k):
            pos, neg = np.flatnonzero(labels[:, c] == 1), np.flatnonzero(labels[:, c] == 0)
            row.append(_Curve(score[:, c], pos, neg) if len(pos) and len(neg) else None)
        curves.append(row)
    out = np.full((len(scores), n_boot, k), math.nan)
    done = 0
    for indices in resample_indices(strata, n, n_boot, seed):
        counts = multiplicities(indices, n)
        b = len(indices)
        for r, row in enumerate(curves):
            for c, curve in enumerate(row):
                if curve is not None:
                    out[r, done : done + b, c] = curve.auroc(counts)
        done += b
    return out


def macro(per_class: np.ndarray) -> np.ndarray:
    """Mean over the last axis, leaving out undefined (NaN) classes; NaN when none is defined."""
    defined = ~np.isnan(per_class)
    total = np.where(defined, per_class, 0.0).sum(axis=-1)
    count = defined.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), math.nan)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the defined (non-NaN) bootstrap values along the first axis."""
    values = samples[~np.isnan(samples)]
    if not len(values):
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a paired difference being zero: twice the smaller share of resampled
    differences on either side of 0 (each share counted with the observed one, (1 + #) / (B + 1))."""
    d = deltas[~np.isnan(deltas)]
    if not len(d):
        return math.nan
    below, above = (1 + np.sum(d <= 0)) / (len(d) + 1), (1 + np.sum(d >= 0)) / (len(d) + 1)
    return float(min(1.0, 2 * min(below, above)))


def roc_band(
    score: np.ndarray,
    label: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    points: int = 101,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive-rate grid, low, high): a pointwise percentile band of the ROC curve's true-positive
    rate over stratified case resamples, each curve read at the grid as the TPR of its last point whose FPR
    does not exceed the grid value (vertical averaging, Fawcett 2006, *An introduction to ROC analysis*)."""
    label = np.asarray(label).astype(bool)
    n = len(label)
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    ordered, positive = np.asarray(score)[order], label[order]
    ends = np.r_[np.flatnonzero(np.diff(ordered)), n - 1]  # one ROC point per distinct score
    pos_upto = np.cumsum(positive)[ends]  # positives ranked at or above each point
    neg_upto = ends + 1 - pos_upto
    pos_rows, neg_rows = order[positive], order[~positive]
    grid = np.linspace(0, 1, points)
    tprs = np.full((n_boot, points), math.nan)
    done = 0
    for indices in resample_indices(label.astype(np.int64), n, n_boot, seed):
        counts = multiplicities(indices, n)
        b = len(indices)
        tp_cum = np.zeros((len(pos_rows) + 1, b))
        fp_cum = np.zeros((len(neg_rows) + 1, b))
        np.cumsum(counts[pos_rows], axis=0, out=tp_cum[1:])
        np.cumsum(counts[neg_rows], axis=0, out=fp_cum[1:])
        tp, fp = tp_cum[pos_upto].T, fp_cum[neg_upto].T  # (b, points of the curve)
        # One searchsorted for all resamples: column j's FPs offset by j * (n + 1) keep the rows apart.
        offsets = np.arange(b)[:, None] * (n + 1.0)
        found = np.searchsorted(
            (fp + offsets).ravel(), (grid * fp_cum[-1][:, None] + offsets).ravel(), "right"
        )
        local = found.reshape(b, points) - 1 - np.arange(b)[:, None] * tp.shape[1]
        reached = np.take_along_axis(tp, np.maximum(local, 0), axis=1)
        tprs[done : done + b] = np.where(local >= 0, reached, 0.0) / tp_cum[-1][:, None]
        done += b
    lo, hi = np.quantile(tprs, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return grid, lo, hi
