"""Operating points: a decision threshold chosen on the validation split and judged on the test split.

``youden`` maximises Youden's J = sensitivity + specificity - 1 (Youden 1950); ``sens@0.9`` is the highest
threshold whose validation sensitivity is at least 0.9 (the most specific such rule), ``spec@0.9`` the
lowest whose validation specificity is at least 0.9 (the most sensitive; +inf, nobody positive, when every
score fails it). A case is called positive when its score is >= the threshold. On test: sensitivity,
specificity, PPV and NPV with Wilson score intervals (Wilson 1927; the interval STARD-style diagnostic
accuracy reports use for a proportion).
"""

from __future__ import annotations

import math
import re

import numpy as np

from src.errors import UserError

RULE = re.compile(r"^(youden|sens@(0?\.\d+|1(\.0*)?)|spec@(0?\.\d+|1(\.0*)?))$")
Z95 = 1.959963984540054


def check_rule(rule: str) -> str:
    if not isinstance(rule, str) or not RULE.match(rule):
        raise UserError(
            f"task.operating_point={rule!r}: choose youden, sens@<target> or spec@<target> with a target in "
            "(0, 1], e.g. sens@0.9."
        )
    return rule


def roc_points(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, sensitivity, specificity): +inf (nobody called positive), then every
    distinct score."""
    order = np.argsort(-score, kind="stable")
    s, y = score[order], label[order].astype(bool)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of every run of equal scores
    tp, fp = np.r_[0, np.cumsum(y)[last]], np.r_[0, np.cumsum(~y)[last]]
    p, n = y.sum(), (~y).sum()
    return np.r_[np.inf, s[last]], tp / max(p, 1), 1 - fp / max(n, 1)


def choose_threshold(score: np.ndarray, label: np.ndarray, rule: str) -> float:
    """The threshold ``rule`` picks on validation scores; NaN when the split lacks positives or negatives."""
    check_rule(rule)
    label = np.asarray(label).astype(bool)
    if label.all() or not label.any():
        return math.nan
    thresholds, sens, spec = roc_points(np.asarray(score, np.float64), label)
    if rule == "youden":
        return float(thresholds[np.argmax(sens + spec)])  # first = highest threshold among equal J
    kind, target = rule.split("@")
    target = float(target)
    if kind == "sens":
        ok = np.flatnonzero(sens >= target - 1e-12)
        return float(thresholds[ok[0]])  # sensitivity grows as the threshold falls: the first one reaching it
    ok = np.flatnonzero(spec >= target - 1e-12)  # never empty: +inf has specificity 1
    return float(thresholds[ok[-1]])


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float, float]:
    """(proportion, low, high) of the Wilson score interval; NaNs for an empty total."""
    if total == 0:
        return math.nan, math.nan, math.nan
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return p, max(0.0, centre - half), min(1.0, centre + half)


def at_threshold(
    score: np.ndarray, label: np.ndarray, threshold: float
) -> dict[str, tuple[float, float, float]]:
    """Sensitivity, specificity, PPV and NPV (each proportion, low, high) of ``score >= threshold``."""
    label = np.asarray(label).astype(bool)
    called = np.asarray(score) >= threshold
    tp, fp = int((called & label).sum()), int((called & ~label).sum())
    fn, tn = int((~called & label).sum()), int((~called & ~label).sum())
    return {
        "sensitivity": wilson(tp, tp + fn),
        "specificity": wilson(tn, tn + fp),
        "ppv": wilson(tp, tp + fp),
        "npv": wilson(tn, tn + fn),
    }
