"""The run's closing artifacts: metrics.json and the short table printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from src.atomic import atomic_write

SHOWN = ("val/auroc", "test/auroc", "val/acc", "test/acc")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic, so a crash never leaves a half-written metrics.json behind."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def format_summary(metrics: dict[str, Any]) -> str:
    """A few aligned lines: the numbers a researcher looks at first."""
    rows: list[tuple[str, str]] = []
    for key in SHOWN:
        value = metrics.get(key)
        shown = f"{value:.4f}" if isinstance(value, float) else "n/a"
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        if isinstance(value, float) and isinstance(low, float) and isinstance(high, float):
            shown += f"  [{low:.4f}, {high:.4f}] 95 % bootstrap CI"
        rows.append((key, shown))
    rows.append(
        (
            "trainable params",
            f"{metrics['trainable_params']:,} / {metrics['total_params']:,} ({metrics['trainable_pct']:.3f}%)",
        )
    )
    rows.append(("adapter", f"{human_bytes(metrics['adapter_bytes'])}  {metrics['adapter_path']}"))
    rows.append(("run dir", str(metrics["run_dir"])))
    rows.append(("mlflow run", metrics.get("mlflow_run_id") or "(logger off)"))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 50)
    body = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    return f"{line}\n{body}\n{line}"
