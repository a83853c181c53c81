"""Holm's step-down correction: Holm (1979), *A simple sequentially rejective multiple test procedure*,
Scandinavian Journal of Statistics 6:65-70. Controls the family-wise error rate under any dependence."""

from __future__ import annotations

import math
from collections.abc import Sequence


def holm(p_values: Sequence[float]) -> list[float]:
    """Adjusted p-values in the input order; NaN entries stay NaN and do not count in the family."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, running = len(ranked), 0.0
    out = [math.nan] * len(p_values)
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
