"""The paper table: ``python -m src.report [experiments=[sz_cxr,...]] [metric=test/auroc] [filter=...]``.

Reads finished MLflow runs of the chosen experiments (default: every experiment in the store at
``tracking_uri``, which follows ``MLFLOW_TRACKING_URI``; narrowed by tags and an MLflow filter) and lays them
out as MeLo / MED-PEFT report them: one row per dataset (x label fraction), one column per strategy
(as the strategy labels itself: ``lora r4``, ``sparse_shpeft 0.01%``, ``bitfit``), each cell the mean ± sample std of ``metric`` over
the runs that share it (seeds, folds) or, for a single run, its value and bootstrap CI, with two closing rows
giving each strategy's trainable share of the weights and adapter size. Runs that differ in any other setting
are never pooled: they are shown apart, with a note saying what differed (:mod:`src.pooling`). Written as Markdown (printed too), CSV (one line per cell, with n) and LaTeX.
``reference=<column>`` adds paired p-values against that column, ``subgroups=true`` subgroup-gap tables
(see :mod:`src.report_stats`).
"""

from __future__ import annotations

if __name__ == "__main__":  # config errors in a second, before the heavy imports below (src/entry.py)
    from src.entry import check_config

    check_config("report")

import csv
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run
from omegaconf import DictConfig, OmegaConf

from src.atomic import atomic_write
from src.config import hydra_entry
from src.errors import UserError
from src.pooling import describe, split_by_settings
from src.report_stats import (
    ci_text,
    comparisons_markdown,
    gap_metrics,
    reference_comparisons,
    run_ci,
    write_comparisons,
)
from src.strategies.base import table_label
from src.summary import human_bytes
from src.tracking.server import check_tracking


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    trainable_pct: list[float] = field(default_factory=list)
    adapter_bytes: list[float] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    ci: tuple[float, float] | None = None  # a single run's bootstrap CI of the metric (src.report_stats)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else math.nan


@dataclass
class Table:
    metric: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    runs: int
    notes: list[str] = field(default_factory=list)  # runs kept apart because their settings differ


def strategy_label(run: Run) -> str:
    settings = {k[len("peft.") :]: v for k, v in run.data.params.items() if k.startswith("peft.")}
    return table_label({**settings, "name": run.data.tags.get("peft") or settings.get("name", "?")})


def row_label(run: Run) -> str:
    dataset = run.data.tags.get("dataset", "?")
    fraction = run.data.tags.get("label_fraction")
    return f"{dataset} @ {float(fraction):.0%} labels" if fraction is not None else dataset


def search(client: MlflowClient, cfg: DictConfig) -> list[Run]:
    experiments = []
    for name in cfg.experiments or []:
        found = client.get_experiment_by_name(name)
        if found is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise UserError(
                f"experiments: no MLflow experiment named {name!r} at tracking_uri={cfg.tracking_uri} "
                f"(experiments there: {known})."
            )
        experiments.append(found.experiment_id)
    if not cfg.experiments:  # every experiment of the store
        experiments = [e.experiment_id for e in client.search_experiments()]
    clauses = ["attributes.status = 'FINISHED'"]
    tags = {**(cfg.tags or {}), **({"sweep_id": cfg.sweep} if cfg.sweep else {})}
    clauses += [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if cfg.filter:
        clauses.append(cfg.filter)
    runs = search_all(client, experiments, " and ".join(clauses))
    if cfg.sweep and not runs:
        known_sweeps(client, experiments, cfg.sweep)
    return runs


def search_all(client: MlflowClient, experiments: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiments, filter_string=filter_string, max_results=1000, page_token=token
        )
        runs += page
        token = page.token
        if not token:
            return runs


def known_sweeps(client: MlflowClient, experiments: list[str], sweep: str) -> None:
    """An unknown ``sweep=``: raise, listing the sweep ids the selected experiments hold."""
    parents = search_all(client, experiments, "tags.sweep_role = 'parent'")
    ids = sorted({r.data.tags["sweep_id"] for r in parents if "sweep_id" in r.data.tags}, reverse=True)
    if any(i == sweep for i in ids):
        return  # the sweep exists; its runs did not finish or do not match the other filters
    shown = ", ".join(ids[:20]) + (f" (+{len(ids) - 20} older)" if len(ids) > 20 else "") if ids else "none"
    raise UserError(f"sweep={sweep}: no such sweep in the experiments selected; known sweep ids: {shown}.")


def build_table(runs: list[Run], metric: str) -> Table:
    by_cell: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        value = run.data.metrics.get(metric)
        # Runs without a test; sweep parents, which repeat their best job's metrics.
        if value is None or math.isnan(value) or run.data.tags.get("sweep_role") == "parent":
            continue
        by_cell[(row_label(run), strategy_label(run))].append(run)
    if not by_cell:
        raise UserError(
            f"metric={metric}: none of the {len(runs)} finished runs selected has it; check `metric`, "
            "`experiments`, `tags` and `filter`."
        )
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    notes: list[str] = []
    for (row, col), members in by_cell.items():
        groups = split_by_settings(members)  # never pool runs of different settings (src/pooling.py)
        if len(groups) > 1:
            differ = sorted({k for d, _ in groups for k in d})
            notes.append(
                f"{row}, {col}: {len(members)} runs differ in {', '.join(differ)}; not pooled, shown as "
                f"{len(groups)} columns labelled with their settings."
            )
        for differ, group in groups:
            cell = cells[(row, f"{col} [{describe(differ)}]" if differ else col)]
            for run in group:
                cell.values.append(run.data.metrics[metric])
                cell.runs.append(run)
                cell.ci = run_ci(run, metric) if len(cell.runs) == 1 else None
                for key in ("trainable_pct", "adapter_bytes"):
                    if key in run.data.metrics:
                        getattr(cell, key).append(run.data.metrics[key])
    used = sum(len(members) for members in by_cell.values())
    pct: dict[str, list[float]] = defaultdict(list)
    for (_, col), cell in cells.items():
        pct[col] += cell.trainable_pct
    columns = sorted({c for _, c in cells}, key=lambda c: (np.mean(pct[c]) if pct[c] else math.inf, c))
    rows = sorted({r for r, _ in cells})
    return Table(metric, rows, columns, dict(cells), used, notes)


def mean_std(cell: Cell | None, digits: int, pm: str = "±") -> str:
    if cell is None:
        return "–"
    if len(cell.values) == 1:
        return ci_text(cell.mean, cell.ci, digits) if cell.ci else f"{cell.mean:.{digits}f}"
    return f"{cell.mean:.{digits}f} {pm} {cell.std:.{digits}f}"


def span(values: list[float], fmt: Any) -> str:
    """One value, or the range when it differs between rows (heads of different class counts)."""
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"


def footer(table: Table) -> list[tuple[str, list[str]]]:
    by_col: dict[str, Cell] = defaultdict(Cell)
    for (_, col), cell in table.cells.items():
        by_col[col].trainable_pct += cell.trainable_pct
        by_col[col].adapter_bytes += cell.adapter_bytes
    return [
        ("trainable %", [span(by_col[c].trainable_pct, lambda v: f"{v:.3g} %") for c in table.columns]),
        ("adapter", [span(by_col[c].adapter_bytes, lambda v: human_bytes(int(v))) for c in table.columns]),
    ]


def markdown(table: Table, digits: int) -> str:
    head = [f"{table.metric} (mean ± std)", *table.columns]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in table.rows:
        cells = [mean_std(table.cells.get((row, c)), digits) for c in table.columns]
        lines.append("| " + " | ".join([row, *cells]) + " |")
    for name, values in footer(table):
        lines.append("| " + " | ".join([f"*{name}*", *values]) + " |")
    lines += [f"\nNote: {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def latex(table: Table, digits: int) -> str:
    cols = "l" + "c" * len(table.columns)
    lines = [
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        " & ".join([latex_escape(table.metric), *map(latex_escape, table.columns)]) + " \\\\",
        "\\midrule",
    ]
    for row in table.rows:
        cells = [mean_std(table.cells.get((row, c)), digits, "$\\pm$") for c in table.columns]
        lines.append(" & ".join([latex_escape(row), *cells]).replace("–", "--") + " \\\\")
    lines.append("\\midrule")
    for name, values in footer(table):
        lines.append(" & ".join(latex_escape(x).replace("–", "--") for x in [name, *values]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_csv(table: Table, path: Path) -> None:
    fields = ["dataset", "strategy", "metric", "mean", "std", "n", "trainable_pct", "adapter_bytes"]
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for (row, col), cell in sorted(table.cells.items()):
            writer.writerow(
                {
                    "dataset": row,
                    "strategy": col,
                    "metric": table.metric,
                    "mean": cell.mean,
                    "std": "" if math.isnan(cell.std) else cell.std,
                    "n": len(cell.values),
                    "trainable_pct": np.mean(cell.trainable_pct) if cell.trainable_pct else "",
                    "adapter_bytes": int(np.mean(cell.adapter_bytes)) if cell.adapter_bytes else "",
                }
            )


def report(cfg: DictConfig) -> tuple[Table, list[Path]]:
    """Select the runs, build the table and write <out_dir>/<name>.{md,csv,tex}."""
    check_tracking(OmegaConf.create({"logger": {"tracking_uri": cfg.tracking_uri}}))
    client = MlflowClient(cfg.tracking_uri)
    runs = search(client, cfg)
    table = build_table(runs, cfg.metric)
    if not cfg.get("ci", True):
        for cell in table.cells.values():
            cell.ci = None
    out = Path(cfg.out_dir)
    paths = [out / f"{cfg.name}.{ext}" for ext in ("md", "csv", "tex")]
    extra = ""  # src.report_stats: reference p-values, subgroup gap tables
    if cfg.get("reference"):
        comparisons = reference_comparisons(table.cells, table.rows, table.columns, cfg, client)
        extra += comparisons_markdown(comparisons, cfg.reference, cfg.digits, cfg.n_boot)
        paths.append(
            write_comparisons(comparisons, cfg.reference, out / f"{cfg.name}_vs_{cfg.reference}.csv")
        )
    for gap in gap_metrics(runs) if cfg.get("subgroups") else []:
        extra += "\n" + markdown(build_table(runs, gap), cfg.digits)
    with atomic_write(paths[0]) as tmp:
        tmp.write_text(markdown(table, cfg.digits) + extra)
    write_csv(table, paths[1])
    with atomic_write(paths[2]) as tmp:
        tmp.write_text(latex(table, cfg.digits))
    return table, paths


@hydra_entry("report")
def main(cfg: DictConfig) -> None:
    try:
        table, paths = report(cfg)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    print(paths[0].read_text(), flush=True)
    print(f"{table.runs} runs; written: {', '.join(str(p) for p in paths)}", flush=True)
    for note in table.notes:  # also under the Markdown table; repeated on stderr so a pipe keeps it
        print(f"note: {note}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
