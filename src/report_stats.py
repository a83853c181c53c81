"""The statistics options of ``src.report``: CI cells, p-values against a reference column, subgroup gaps.

* ``ci=true`` (default): a cell holding a single run shows ``AUROC [low, high]``, the run's bootstrap 95 %
  CI (``<metric>_ci_low`` / ``_ci_high`` as the run logged them); cells over several seeds / folds keep
  ``mean ± std``.
* ``reference=<column>`` (e.g. ``full``): per dataset row, each other strategy against that column by the
  paired case bootstrap of its test AUROC (``n_boot``, ``seed``) on the runs' ``predictions_test.csv``
  artifacts. Runs are paired by seed and fold; the difference is averaged over the pairs in every resample.
  The p-values are Holm-adjusted across the whole table (Holm 1979).
* ``subgroups=true``: one more table per subgroup attribute the runs logged (``test/subgroup/<attribute>/
  auroc_gap``: the largest AUROC gap between its subgroups).
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from src.atomic import atomic_write
from src.compare import FILE, check_same_cases
from src.errors import UserError
from src.stats.bootstrap import bootstrap_auroc, bootstrap_p, macro, percentile_ci
from src.stats.delong import per_class_auroc
from src.stats.holm import holm
from src.stats.predictions import Predictions, read_predictions


def ci_keys(metric: str) -> list[tuple[str, str]]:
    """Where a run logs the CI of ``metric``: ``test/auroc`` -> ``test/auroc_ci_low``; per class
    ``test/auroc/<class>`` -> ``test/auroc_ci_low/<class>``."""
    keys = [(f"{metric}_ci_low", f"{metric}_ci_high")]
    parts = metric.split("/")
    if len(parts) > 2:
        head, rest = "/".join(parts[:2]), "/".join(parts[2:])
        keys.append((f"{head}_ci_low/{rest}", f"{head}_ci_high/{rest}"))
    return keys


def run_ci(run: Run, metric: str) -> tuple[float, float] | None:
    for low, high in ci_keys(metric):
        if low in run.data.metrics and high in run.data.metrics:
            return run.data.metrics[low], run.data.metrics[high]
    return None


def ci_text(mean: float, ci: tuple[float, float], digits: int) -> str:
    return f"{mean:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


@dataclass
class Comparison:
    row: str
    column: str
    pairs: int
    delta: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float = math.nan


def pair_key(run: Run) -> tuple[str, str]:
    return run.data.params.get("seed", ""), run.data.tags.get("fold", "")


def curve_of(metric: str, pred: Predictions) -> Predictions:
    """The predictions restricted to what ``metric`` scores: all curves (macro) or one class."""
    parts = metric.split("/")
    if parts[:2] != ["test", "auroc"] or len(parts) > 3:
        raise UserError(
            f"reference= compares test AUROC: use metric=test/auroc or metric=test/auroc/<class>, not {metric}."
        )
    if len(parts) == 2:
        return pred
    names = list(pred.class_names)
    if parts[2] not in names:
        raise UserError(f"metric={metric}: the runs' classes are {names}.")
    c = names.index(parts[2])
    return Predictions(pred.ids, (parts[2],), pred.labels[:, c : c + 1], pred.scores[:, c : c + 1])


class PredictionStore:
    """Downloads each run's predictions_test.csv once."""

    def __init__(self, client: MlflowClient, scratch: Path) -> None:
        self.client, self.scratch, self.cache = client, scratch, {}

    def get(self, run: Run) -> Predictions:
        run_id = run.info.run_id
        if run_id not in self.cache:
            try:
                path = self.client.download_artifacts(run_id, FILE, str(self.scratch / run_id))
            except (MlflowException, OSError):
                raise UserError(
                    f"run {run_id} ({run.info.run_name}) has no {FILE} artifact, needed by reference=; runs "
                    "log it since the statistics release (re-run it, or leave it out with filter=...)."
                ) from None
            self.cache[run_id] = read_predictions(Path(path))
        return self.cache[run_id]


def compare_cells(
    row: str,
    column: str,
    runs: list[Run],
    ref_runs: list[Run],
    store: PredictionStore,
    metric: str,
    n_boot: int,
    seed: int,
) -> Comparison:
    """``column`` against the reference in one row: paired by (seed, fold), the per-resample difference
    averaged over the pairs (the same resamples where pairs share a test split)."""
    ref_by_key = {pair_key(r): r for r in ref_runs}
    pairs = [(ref_by_key[pair_key(r)], r) for r in runs if pair_key(r) in ref_by_key]
    if not pairs:
        return Comparison(row, column, 0, math.nan, math.nan, math.nan, math.nan)
    deltas, points = [], []
    for ref, run in pairs:
        a, b = curve_of(metric, store.get(ref)), curve_of(metric, store.get(run))
        check_same_cases(a, b, f"run {ref.info.run_id}", f"run {run.info.run_id}")
        _, labels, score_a = a.curves()
        _, _, score_b = b.curves()
        boot = macro(bootstrap_auroc([score_a, score_b], labels, n_boot, seed))
        deltas.append(boot[1] - boot[0])
        points.append(
            float(macro(per_class_auroc(score_b, labels)) - macro(per_class_auroc(score_a, labels)))
        )
    mean_delta = np.mean(deltas, axis=0)
    lo, hi = percentile_ci(mean_delta)
    return Comparison(row, column, len(pairs), float(np.mean(points)), lo, hi, bootstrap_p(mean_delta))


def reference_comparisons(
    cells: dict[tuple[str, str], Any], rows: list[str], columns: list[str], cfg: Any, client: MlflowClient
) -> list[Comparison]:
    """Every (row, column != reference) against the reference column, Holm-adjusted together."""
    reference = cfg.reference
    if reference not in columns:
        raise UserError(f"reference={reference!r} is not a column of the table; the columns are {columns}.")
    out = []
    with tempfile.TemporaryDirectory() as scratch:
        store = PredictionStore(client, Path(scratch))
        for row in rows:
            ref = cells.get((row, reference))
            for column in columns:
                cell = cells.get((row, column))
                if column == reference or cell is None or ref is None:
                    continue
                out.append(
                    compare_cells(row, column, cell.runs, ref.runs, store, cfg.metric, cfg.n_boot, cfg.seed)
                )
    for comparison, adjusted in zip(out, holm([c.p for c in out]), strict=True):
        comparison.p_holm = adjusted
    return out


def p_text(p: float) -> str:
    return "–" if math.isnan(p) else "<0.001" if p < 1e-3 else f"{p:.3f}"


def comparisons_markdown(comparisons: list[Comparison], reference: str, digits: int, n_boot: int) -> str:
    if not comparisons:
        return ""
    lines = [
        f"\nΔ vs {reference} (paired bootstrap over test cases, {n_boot} resamples; p Holm-adjusted across "
        "the table)\n",
        "| dataset | strategy | pairs | Δ [95 % CI] | p | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        delta = (
            "–"
            if math.isnan(c.delta)
            else f"{c.delta:+.{digits}f} [{c.ci_low:+.{digits}f}, {c.ci_high:+.{digits}f}]"
        )
        lines.append(f"| {c.row} | {c.column} | {c.pairs} | {delta} | {p_text(c.p)} | {p_text(c.p_holm)} |")
    return "\n".join(lines) + "\n"


def write_comparisons(comparisons: list[Comparison], reference: str, path: Path) -> Path:
    fields = ["dataset", "strategy", "reference", "pairs", "delta", "ci_low", "ci_high", "p", "p_holm"]
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for c in comparisons:
            writer.writerow(
                [c.row, c.column, reference, c.pairs, c.delta, c.ci_low, c.ci_high, c.p, c.p_holm]
            )
    return path


def gap_metrics(runs: list[Run]) -> list[str]:
    """The subgroup gap metrics any of ``runs`` logged, e.g. ``test/subgroup/sex/auroc_gap``."""
    found = defaultdict(int)
    for run in runs:
        for key in run.data.metrics:
            if key.startswith("test/subgroup/") and key.endswith("/auroc_gap"):
                found[key] += 1
    return sorted(found)
