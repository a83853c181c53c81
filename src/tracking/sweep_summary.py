"""The end-of-sweep summary: one row per job (CSV + Markdown) and MeLo's "performance vs trainable
parameters" figure — test AUROC and accuracy against trainable parameters (log x) and against the rank,
one line per strategy, points averaged over the jobs that share them (seeds, folds).

The figure is meant for a paper: ± 1 sample-std bars only where a point has several runs (the title says
how many), a y axis at least ``MIN_SPAN`` wide so seed noise does not look like a trend (its label says
where it starts), tick labels that do not overlap (the ranks run, parameter counts as 12k / 1.2M), and the
file in ``<sweep dir>/figures/``.
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
from matplotlib.ticker import EngFormatter, FixedLocator, LogLocator, NullLocator, ScalarFormatter

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
MIN_SPAN = 0.1  # AUROC / accuracy: the y axis covers at least this much
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
    csv_path, md_path = (out_dir / f"sweep_summary.{ext}" for ext in ("csv", "md"))
    png_path = out_dir / "figures" / "sweep_summary.png"
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
) -> dict[str, list[tuple[float, list[float]]]]:
    """strategy -> sorted (x, values of ``metric``) over the finished jobs that share x."""
    points: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        x, y = r.get(x_key), r.get(metric)
        if r["status"] == "COMPLETED" and x is not None and isinstance(y, float) and not math.isnan(y):
            points[str(r["peft"])][float(x)].append(y)
    return {peft: sorted(by_x.items()) for peft, by_x in sorted(points.items())}


def y_limits(values: list[float], span: float = MIN_SPAN) -> tuple[float, float]:
    """The data's range widened to at least ``span`` around its middle, kept inside [0, 1]."""
    lo, hi = min(values), max(values)
    pad = max(span - (hi - lo), 0.0) / 2 + 0.01
    lo, hi = max(lo - pad, 0.0), min(hi + pad, 1.0)
    if hi - lo < span:  # pushed against 0 or 1: widen the other way
        lo, hi = (max(hi - span, 0.0), hi) if hi >= 1.0 else (lo, min(lo + span, 1.0))
    return lo, hi


def draw_points(ax: plt.Axes, peft: str, pts: list[tuple[float, list[float]]], color: str) -> None:
    """The means joined by a line; a ± 1 sample-std bar only where a point has several runs."""
    xs = [x for x, _ in pts]
    means = [float(np.mean(ys)) for _, ys in pts]
    (line,) = ax.plot(xs, means, marker="o", label=peft, color=color)
    many = [(x, float(np.mean(ys)), float(np.std(ys, ddof=1))) for x, ys in pts if len(ys) > 1]
    if many:
        bx, by, be = zip(*many, strict=True)
        ax.errorbar(bx, by, yerr=be, fmt="none", capsize=3, color=line.get_color())


def format_x(ax: plt.Axes, x_key: str, xs: list[float]) -> None:
    if x_key == "rank":  # the ranks run, as integers, on a log2 axis
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(xs))))
        ax.xaxis.set_major_formatter(ScalarFormatter())
    else:  # parameter counts as 12k / 1.2M, at most a handful of decades labelled
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_locator(NullLocator())


def plot_summary(rows: list[dict[str, Any]]) -> plt.Figure:
    axes_x = [("trainable_params", "trainable parameters (log scale)")]
    if any(r["rank"] is not None for r in rows):
        axes_x.append(("rank", "rank (log2 scale)"))
    fig, axes = plt.subplots(
        len(METRICS), len(axes_x), figsize=(5.5 * len(axes_x), 3.8 * len(METRICS)), squeeze=False
    )
    most = 1
    colors = {
        peft: f"C{i}" for i, peft in enumerate(sorted({str(r["peft"]) for r in rows}))
    }  # same in every panel
    for i, (metric, label) in enumerate(METRICS):
        for j, (x_key, x_label) in enumerate(axes_x):
            ax = axes[i][j]
            groups = grouped(rows, x_key, metric)
            values = [y for pts in groups.values() for _, ys in pts for y in ys]
            y_label = label
            for peft, pts in groups.items():
                draw_points(ax, peft, pts, colors[peft])
                most = max(most, *(len(ys) for _, ys in pts))
            if values:
                format_x(ax, x_key, [x for pts in groups.values() for x, _ in pts])
                lo, hi = y_limits(values)
                ax.set_ylim(lo, hi)
                y_label = label if lo == 0 else f"{label} (axis from {lo:.2f})"
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    spread = "mean ± sample std where a point has several seeds / folds" if most > 1 else "one run per point"
    fig.suptitle(f"sweep: performance vs trainable parameters ({spread})")
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
