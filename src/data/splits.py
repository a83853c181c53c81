"""Seeded, stratified splitting of a labelled file list."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from src.errors import UserError


def holdout_sizes(n: int, eval_fraction: float = 0.2) -> tuple[int, int, int]:
    """(train, val, test) as MeLo's two-stage split: ceil(20 %) held out, then halved (val gets the odd one).

    662 Shenzhen images -> 529 / 67 / 66, MeLo's published sizes.
    """
    held = math.ceil(n * eval_fraction)
    test = held // 2
    return n - held, held - test, test


def stratified_split(labels: Sequence[int], sizes: tuple[int, int, int], seed: int) -> list[np.ndarray]:
    """Indices of each split, class proportions kept (largest remainder), exact split sizes, seeded."""
    labels = np.asarray(labels)
    if sum(sizes) != len(labels):
        raise ValueError(f"split sizes {sizes} do not add up to {len(labels)} items")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    counts = {c: len(pools[c]) for c in classes}
    parts: list[list[int]] = [[] for _ in sizes]
    taken = dict.fromkeys(classes, 0)
    for s, size in enumerate(sizes[:-1]):
        quota = {c: size * counts[c] / len(labels) for c in classes}
        alloc = {c: min(math.floor(quota[c]), counts[c] - taken[c]) for c in classes}
        by_remainder = sorted(classes, key=lambda c: quota[c] - math.floor(quota[c]), reverse=True)
        for c in by_remainder:
            if sum(alloc.values()) >= size:
                break
            if alloc[c] < counts[c] - taken[c]:
                alloc[c] += 1
        for c in classes:
            parts[s].extend(pools[c][taken[c] : taken[c] + alloc[c]].tolist())
            taken[c] += alloc[c]
    for c in classes:
        parts[-1].extend(pools[c][taken[c] :].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def label_matrix(targets: np.ndarray | Sequence) -> np.ndarray:
    """(N, K) 0/1 matrix to stratify on: one-hot classes, or multilabel columns (NaN = unknown = 0)
    plus a last "no positive label" column, so that all-negative images (NIH "No Finding") are kept in
    proportion too."""
    y = np.asarray(targets)
    if y.ndim == 1:
        _, inverse = np.unique(y, return_inverse=True)
        return np.eye(inverse.max() + 1 if len(y) else 0, dtype=np.float64)[inverse]
    y = np.nan_to_num(y.astype(np.float64), nan=0.0) > 0
    return np.concatenate([y, ~y.any(axis=1, keepdims=True)], axis=1).astype(np.float64)


def _unit_labels(y: np.ndarray, groups: Sequence | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit of each item (its patient, else itself), label counts per unit, items per unit."""
    if groups is None:
        unit = np.arange(len(y))
    elif len(groups) != len(y):
        raise ValueError(f"{len(groups)} groups for {len(y)} items")
    else:
        unit = np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1]
    n_units = int(unit.max()) + 1 if len(y) else 0
    items = label_matrix(y)
    labels = np.zeros((n_units, items.shape[1]))
    np.add.at(labels, unit, items)
    return unit, labels, np.bincount(unit, minlength=n_units).astype(np.float64)


def iterative_stratification(
    labels: np.ndarray, weights: np.ndarray, ratios: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Fold of each unit, after Sechidis, Tsoumakas & Vlahavas (2011), "On the stratification of
    multi-label data": rarest label first, each of its units to the fold that still lacks most of it.

    ``labels`` (U, K) are per-unit label counts, ``weights`` (U,) the items per unit.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    wanted = ratios[:, None] * labels.sum(axis=0)[None, :]  # (F, K) label counts each fold still wants
    room = ratios * weights.sum()  # items each fold still wants
    fold = np.full(len(labels), -1, dtype=np.int64)
    order = rng.permutation(len(labels))
    remaining = labels[order] > 0

    def place(unit: int, candidates: np.ndarray) -> None:
        best = candidates[room[candidates] == room[candidates].max()]
        f = int(best[0] if len(best) == 1 else rng.choice(best))
        fold[unit] = f
        wanted[f] -= labels[unit]
        room[f] -= weights[unit]

    open_units = np.ones(len(labels), dtype=bool)
    while True:
        counts = (remaining & open_units[:, None]).sum(axis=0)
        live = np.flatnonzero(counts)
        if not len(live):
            break
        k = live[np.argmin(counts[live])]
        for pos in np.flatnonzero(remaining[:, k] & open_units):
            unit = order[pos]
            need = wanted[:, k]
            place(unit, np.flatnonzero(need == need.max()))
            open_units[pos] = False
    for pos in np.flatnonzero(open_units):  # units without any label
        place(order[pos], np.arange(len(ratios)))
    return fold


def check_label_fraction(fraction: object) -> None:
    """``dataset.label_fraction`` must be a number in (0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise UserError(
            f"dataset.label_fraction={fraction!r} must be in (0, 1]: the share of the training split "
            "to train on, e.g. dataset.label_fraction=0.01 for 1 %, 1.0 for all of it."
        )


def label_fraction_indices(
    targets: np.ndarray | Sequence, fraction: float, seed: int, groups: Sequence | None = None
) -> np.ndarray:
    """Sorted indices of a seeded, stratified ``fraction`` of a training split (MED-PEFT's 1 / 10 / 100 %
    label-efficiency protocol), at least one item.

    ``targets`` is (N,) class ids or (N, C) multilabel (NaN = unknown). Single-label data without groups
    get the exact size ``round(fraction * N)`` with class proportions kept (largest remainder); multilabel
    data or data with ``groups`` (patient ids: a patient is taken whole or not at all) use iterative
    stratification, then whole units are moved in or out while that brings the size closer to the target.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    y = np.asarray(targets)
    n = len(y)
    if fraction == 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    target = max(1, round(fraction * n))
    if y.ndim == 1 and groups is None:
        return stratified_split(y, (target, n - target), seed)[0]
    unit, labels, weights = _unit_labels(y, groups)
    rng = np.random.default_rng(seed)
    chosen = iterative_stratification(labels, weights, (fraction, 1 - fraction), rng) == 0
    _resize_to(chosen, labels, weights, target, fraction)
    return np.flatnonzero(chosen[unit]).astype(np.int64)


def _resize_to(
    chosen: np.ndarray, labels: np.ndarray, weights: np.ndarray, target: int, fraction: float
) -> None:
    """Move whole units in or out of ``chosen`` (in place) while the item count gets closer to ``target``;
    each move takes the unit whose labels the subset has most in excess (out) or most lacks (in)."""
    wanted = fraction * labels.sum(axis=0)
    while True:
        size = weights[chosen].sum()
        gap = size - target
        leaving = gap > 0
        pool = chosen if leaving else ~chosen
        # A move helps only if the unit is smaller than twice the gap.
        pool = pool & (weights < 2 * abs(gap))
        if not gap or not pool.any():
            break
        excess = labels[chosen].sum(axis=0) - wanted
        score = labels @ (excess if leaving else -excess) / np.maximum(labels.sum(axis=1), 1)
        candidates = np.flatnonzero(pool)
        pick = candidates[np.argmax(score[candidates])]
        chosen[pick] = not leaving


def fraction_sizes(n: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """``n`` items cut in ``fractions`` (largest remainder), each part non-empty when ``n`` allows."""
    quota = np.asarray(fractions, dtype=np.float64) * n / sum(fractions)
    sizes = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - sizes), kind="stable")[: n - sizes.sum()]:
        sizes[i] += 1
    for i in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        if sizes[donor] > 1:
            sizes[donor] -= 1
            sizes[i] += 1
    return tuple(int(s) for s in sizes)


def split_by_fractions(
    targets: np.ndarray | Sequence, fractions: Sequence[float], seed: int, groups: Sequence | None = None
) -> list[np.ndarray]:
    """Sorted indices of each part, seeded and stratified: exact sizes for single-label data without
    groups, else iterative stratification over whole patients (see :func:`iterative_stratification`)."""
    y = np.asarray(targets)
    if y.ndim == 1 and groups is None:
        return stratified_split(y, fraction_sizes(len(y), fractions), seed)
    unit, labels, weights = _unit_labels(y, groups)
    ratios = np.asarray(fractions, dtype=np.float64) / sum(fractions)
    fold = iterative_stratification(labels, weights, ratios, np.random.default_rng(seed))[unit]
    return [np.flatnonzero(fold == f).astype(np.int64) for f in range(len(ratios))]
