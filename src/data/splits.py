"""Seeded, stratified splitting of a labelled file list."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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
