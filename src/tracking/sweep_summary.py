"""The end-of-sweep summary: one row per job (CSV + Markdown) and MeLo's "performance vs trainable
parameters" figure — test AUROC and accuracy against trainable parameters (log x) and against the rank,
one line per strategy, points averaged over the jobs that share them (seeds, folds), with ± 1 std bars.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from src.atomic import atomic_write

COLUMNS = (
    "job",
    "status",
    "dataset",
    "label_fraction",
    "fold",
    "backbone",
    "peft",
    "rank",
    "seed",
    "trainable_params",
    "trainable_pct",
    "adapter_bytes",
    "val/auroc",
    "test/auroc",
    "test/acc",
    "overrides",
    "error",
)
METRICS = (("test/auroc", "test AUROC"), ("test/acc", "test accuracy"))
# What the parent run shows of its best job, chosen by validation AUROC (never by a test metric).
SELECT_BY = "val/auroc"
BEST_METRICS = ("val/auroc", "test/auroc", "test/acc", "trainable_params", "trainable_pct", "adapter_bytes")


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Job records joined with the metrics.json each finished job wrote; ``overrides`` keeps only those
    that differ between jobs (the swept ones)."""
    common = set.intersection(*(set(r["overrides"]) for r in records)) if len(records) > 1 else set()
    rows = []
    for record in records:
        metrics_file = Path(record["output_dir"]) / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        row = {**record, **{k: metrics.get(k) for k in COLUMNS if k in metrics}}
        row["overrides"] = " ".join(o for o in record["overrides"] if o not in common)
        rows.append({k: row.get(k) for k in COLUMNS})
    return rows


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_summary(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write sweep_summary.{csv,md,png} into ``out_dir``; returns their paths (CSV first)."""
    rows = summary_rows(records)
    csv_path, md_path, png_path = (out_dir / f"sweep_summary.{ext}" for ext in ("csv", "md", "png"))
    with atomic_write(csv_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in row.items()} for row in rows)
    shown = [c for c in COLUMNS if c != "error" and any(r[c] is not None for r in rows)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(cell(r[c]).replace("|", "\\|") for c in shown) + " |" for r in rows]
    with atomic_write(md_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_write(png_path) as tmp:
        plot_summary(rows).savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close("all")
    return [csv_path, md_path, png_path]


def grouped(
    rows: list[dict[str, Any]], x_key: str, metric: str
) -> dict[str, list[tuple[float, float, float]]]:
    """strategy -> sorted (x, mean, std) of ``metric`` over the finished jobs that share x."""
    points: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        x, y = r.get(x_key), r.get(metric)
        if r["status"] == "COMPLETED" and x is not None and isinstance(y, float) and not math.isnan(y):
            points[str(r["peft"])][float(x)].append(y)
    return {
        peft: [(x, float(np.mean(ys)), float(np.std(ys))) for x, ys in sorted(by_x.items())]
        for peft, by_x in sorted(points.items())
    }


def plot_summary(rows: list[dict[str, Any]]) -> plt.Figure:
    axes_x = [("trainable_params", "trainable parameters (log)")]
    if any(r["rank"] is not None for r in rows):
        axes_x.append(("rank", "rank"))
    fig, axes = plt.subplots(
        len(METRICS), len(axes_x), figsize=(5.5 * len(axes_x), 3.8 * len(METRICS)), squeeze=False
    )
    for i, (metric, label) in enumerate(METRICS):
        for j, (x_key, x_label) in enumerate(axes_x):
            ax = axes[i][j]
            for peft, pts in grouped(rows, x_key, metric).items():
                xs, means, stds = zip(*pts, strict=True)
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=peft)
            if x_key == "trainable_params":
                ax.set_xscale("log")
            else:
                ax.set_xscale("log", base=2)
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle("sweep: performance vs trainable parameters (mean ± std over seeds / folds)")
    fig.tight_layout()
    return fig


def parent_summary(records: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) for the sweep's parent run: the number of jobs (and failed ones), and the metrics of
    the finished job with the highest ``val/auroc``, under their own names, so the parent's row in the
    runs table reads as the sweep's result; tags ``best_job``, ``best_run_id`` and ``best_overrides``."""
    rows = summary_rows(records)
    failed = sum(r["status"] != "COMPLETED" for r in rows)
    metrics: dict[str, float] = {"sweep/jobs": float(len(rows)), "sweep/failed_jobs": float(failed)}
    done = [
        (r, rec)
        for r, rec in zip(rows, records, strict=True)
        if r["status"] == "COMPLETED" and isinstance(r.get(SELECT_BY), float) and not math.isnan(r[SELECT_BY])
    ]
    if not done:
        return metrics, {}
    best, record = max(done, key=lambda pair: pair[0][SELECT_BY])
    metrics |= {k: float(best[k]) for k in BEST_METRICS if isinstance(best.get(k), (int, float))}
    metrics_file = Path(record["output_dir"]) / "metrics.json"
    run_id = json.loads(metrics_file.read_text()).get("mlflow_run_id") if metrics_file.is_file() else None
    tags = {"best_job": str(best["job"]), "best_overrides": " ".join(record["overrides"])}
    if run_id:
        tags["best_run_id"] = run_id
    return metrics, tags
