"""Splits that keep every patient on one side: a held-out share of patients, and k folds of patients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from src.errors import UserError


def patient_holdout(groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the items whose patient is held out: whole patients drawn in a seeded order until
    they hold at least ``fraction`` of the items (at least one patient, never all of them)."""
    uniq, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    if len(uniq) < 2:
        raise UserError(f"cannot hold out patients from {len(uniq)} patient(s); the split needs at least 2.")
    order = np.random.default_rng(seed).permutation(len(uniq))
    taken = int(np.searchsorted(np.cumsum(counts[order]), fraction * len(inverse))) + 1
    held = np.zeros(len(uniq), dtype=bool)
    held[order[: min(max(taken, 1), len(uniq) - 1)]] = True
    return held[inverse]


def patient_folds(groups: Sequence[str], labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of every item: patients dealt into k folds in a seeded order, stratified by the
    patient's label (the largest of its items' labels), so that folds are patient-disjoint and balanced."""
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if len(uniq) < k:
        raise UserError(f"{k} folds need at least {k} patients; the data holds {len(uniq)}.")
    patient_label = np.zeros(len(uniq), dtype=np.int64)
    np.maximum.at(patient_label, inverse, np.asarray(labels, dtype=np.int64))
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(uniq), dtype=np.int64)
    dealt = 0  # continue the deal across classes so that fold sizes differ by at most one patient
    for label in np.unique(patient_label):
        members = rng.permutation(np.flatnonzero(patient_label == label))
        fold_of[members] = (dealt + np.arange(len(members))) % k
        dealt += len(members)
    return fold_of[inverse]
