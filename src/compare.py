"""Compare two runs on the same test split: ``python -m src.compare runs=[A,B] [n_boot=2000] [out=...]``.

``A`` and ``B`` are run dirs (their ``predictions_test.csv``), predictions files, or MLflow run ids (the
``predictions_test.csv`` artifact, from ``tracking_uri``). Per class and macro: each run's AUROC, the
difference ``delta = AUROC(B) - AUROC(A)``, its CI from the paired, stratified case bootstrap (``n_boot``
resamples, ``seed``) and the paired DeLong p-value (DeLong et al. 1988, fast form of Sun & Xu 2014; for the
macro AUROC, which DeLong does not cover, the bootstrap p-value). Prints a table and writes ``out``::

    {"classes": {<class>: {"auroc_a", "auroc_b", "delta", "ci_low", "ci_high", "p_delong", "p_bootstrap"}},
     "macro": {"auroc_a", "auroc_b", "delta", "ci_low", "ci_high", "p_bootstrap"}, "runs": [A, B], ...}

Runs whose test cases differ (ids, order or labels) are refused, naming the first difference.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from src.config import hydra_entry
from src.errors import UserError
from src.stats.bootstrap import bootstrap_auroc, bootstrap_p, macro, percentile_ci
from src.stats.delong import delong_test, per_class_auroc
from src.stats.predictions import Predictions, read_predictions
from src.summary import write_json

FILE = "predictions_test.csv"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def locate(run: str, tracking_uri: str | None, scratch: Path) -> Path:
    """The predictions file of a run dir, a file, or an MLflow run id."""
    path = Path(str(run)).expanduser()
    if path.is_dir():
        if not (path / FILE).is_file():
            raise UserError(
                f"{path} has no {FILE}: runs write it since the statistics release; re-create it with "
                f"`python -m src.eval run_dir={path}` (eval_{FILE}) and pass that file."
            )
        return path / FILE
    if path.is_file():
        return path
    if RUN_ID.match(str(run)) and tracking_uri:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            return Path(
                MlflowClient(tracking_uri).download_artifacts(str(run), FILE, str(scratch / str(run)))
            )
        except (MlflowException, OSError) as err:
            raise UserError(
                f"MLflow run {run} at tracking_uri={tracking_uri}: no {FILE} artifact ({str(err).splitlines()[0]})."
            ) from None
    raise UserError(f"runs: {run} is neither a run dir, a predictions file nor an MLflow run id.")


def check_same_cases(a: Predictions, b: Predictions, name_a: str, name_b: str) -> None:
    """Refuse a pair whose test cases differ, naming the first difference."""
    if a.class_names != b.class_names:
        raise UserError(
            f"{name_a} and {name_b} have different classes: {list(a.class_names)} vs {list(b.class_names)}."
        )
    for i, (x, y) in enumerate(zip(a.ids, b.ids, strict=False)):
        if x != y:
            raise UserError(
                f"{name_a} and {name_b} list different test cases: row {i + 1} is {x!r} in the first and {y!r} "
                "in the second. Compare runs on the same test split (same dataset, split and order)."
            )
    if len(a) != len(b):
        longer, extra = (name_a, a.ids[len(b)]) if len(a) > len(b) else (name_b, b.ids[len(a)])
        raise UserError(
            f"{name_a} has {len(a)} test cases and {name_b} {len(b)}: the first one only {longer} holds is "
            f"{extra!r} (row {min(len(a), len(b)) + 1})."
        )
    same = (a.labels == b.labels) | (np.isnan(a.labels) & np.isnan(b.labels))
    if not same.all():
        row, col = np.argwhere(~same)[0]
        raise UserError(
            f"{name_a} and {name_b} label test case {a.ids[row]!r} differently for {a.class_names[col]} "
            f"({a.labels[row, col]} vs {b.labels[row, col]}): different label policies (e.g. "
            "dataset.uncertainty) make the AUROCs incomparable."
        )


def compare_predictions(
    a: Predictions, b: Predictions, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """The comparison above as a dict (the JSON written)."""
    names, labels, score_a = a.curves()
    _, _, score_b = b.curves()
    boot = bootstrap_auroc([score_a, score_b], labels, n_boot, seed)
    point_a, point_b = per_class_auroc(score_a, labels), per_class_auroc(score_b, labels)
    classes = {}
    for c, name in enumerate(names):
        known = ~np.isnan(labels[:, c])
        test = delong_test(score_a[known, c], score_b[known, c], labels[known, c])
        deltas = boot[1, :, c] - boot[0, :, c]
        lo, hi = percentile_ci(deltas, level)
        classes[name] = {
            "auroc_a": float(point_a[c]),
            "auroc_b": float(point_b[c]),
            "delta": float(point_b[c] - point_a[c]),
            "ci_low": lo,
            "ci_high": hi,
            "p_delong": test.p,
            "p_bootstrap": bootstrap_p(deltas),
        }
    deltas = macro(boot[1]) - macro(boot[0])
    lo, hi = percentile_ci(deltas, level)
    macro_a, macro_b = float(macro(point_a)), float(macro(point_b))
    return {
        "classes": classes,
        "macro": {
            "auroc_a": macro_a,
            "auroc_b": macro_b,
            "delta": macro_b - macro_a,
            "ci_low": lo,
            "ci_high": hi,
            "p_bootstrap": bootstrap_p(deltas),
        },
        "n_cases": len(a),
        "n_boot": n_boot,
        "seed": seed,
        "ci": level,
    }


def fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def p_text(p: float) -> str:
    return "n/a" if p is None or math.isnan(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def table(result: dict[str, Any], digits: int = 4) -> str:
    pct = f"{result['ci']:.0%}"
    head = ["class", "AUROC A", "AUROC B", "delta (B-A)", f"{pct} CI", "p"]
    rows = [head]
    for name, r in [*result["classes"].items(), ("macro", result["macro"])]:
        p = r.get("p_delong", r["p_bootstrap"])
        rows.append(
            [
                name,
                fmt(r["auroc_a"], digits),
                fmt(r["auroc_b"], digits),
                fmt(r["delta"], digits),
                f"[{fmt(r['ci_low'], digits)}, {fmt(r['ci_high'], digits)}]",
                p_text(p) + (" (bootstrap)" if name == "macro" else ""),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return (
        "\n".join(lines)
        + f"\n{result['n_cases']} test cases, {result['n_boot']} paired bootstrap resamples; p: DeLong per class\n"
    )


def compare(cfg: DictConfig) -> dict[str, Any]:
    runs = list(cfg.runs) if not isinstance(cfg.runs, str) else [cfg.runs]
    if len(runs) != 2:
        raise UserError(
            f"runs={runs}: give exactly two runs, runs=[A,B] (run dirs, predictions files or MLflow run ids)."
        )
    n_boot = cfg.n_boot
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise UserError(f"n_boot={n_boot!r} must be a positive number of bootstrap resamples.")
    with tempfile.TemporaryDirectory() as scratch:
        files = [locate(r, cfg.get("tracking_uri"), Path(scratch)) for r in runs]
        a, b = (read_predictions(f) for f in files)
    check_same_cases(a, b, str(runs[0]), str(runs[1]))
    result = compare_predictions(a, b, n_boot, cfg.seed, cfg.ci)
    return {**result, "runs": [str(r) for r in runs]}


@hydra_entry("compare")
def main(cfg: DictConfig) -> None:
    try:
        result = compare(cfg)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    print(table(result, cfg.digits), flush=True)
    if cfg.out:
        write_json(Path(cfg.out), result)
        print(f"written: {cfg.out}", flush=True)


if __name__ == "__main__":
    main()
