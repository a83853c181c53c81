"""The columns of ``src.predict``'s CSV: named after the task each adapter was trained on, plus a decision.

Columns used to carry the run dir's name (``2026-11-30_16-30-04_lora_synthetic:opacity``). Now every
adapter's columns start with its task: the dataset it was trained on (adapter metadata ``dataset``; for older
adapters the run's ``config.yaml`` beside the file), or the name given in ``adapters={name: file}``. Two
adapters of one dataset are told apart by strategy and rank (``synthetic(lora r4)``), then by a number.

Per adapter: one probability column per class (``<task>:<class>``) and ``<task>:predicted``, the decision:
the arg-max class for multiclass; for binary the positive (second) class when its probability reaches
``threshold``, else the first; for multilabel every class at or above ``threshold``, joined by ``;`` (empty:
none). With the default 0.5 these are the decisions the training metrics and figures use.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from src.adapter import read_metadata
from src.errors import UserError

LABEL_SEPARATOR = ";"


@dataclass(frozen=True)
class AdapterTask:
    prefix: str  # unique among the adapters of one CSV
    type: str  # binary / multiclass / multilabel
    class_names: tuple[str, ...]


def trained_on(path: Path, meta: Mapping[str, str]) -> str | None:
    """The dataset an adapter was trained on: its metadata, else its run's config.yaml."""
    if meta.get("dataset"):
        return meta["dataset"]
    config = path.parent / "config.yaml"
    if config.is_file():
        return OmegaConf.select(OmegaConf.load(config), "dataset.name")
    return None


def adapter_tasks(named: Mapping[str, str], user_named: bool) -> dict[str, AdapterTask]:
    """Adapter name (as in the bank) -> its columns' prefix, task type and classes."""
    metas = {name: read_metadata(path) for name, path in named.items()}
    base = {
        name: name if user_named else (trained_on(Path(named[name]), meta) or name)
        for name, meta in metas.items()
    }
    counts = Counter(base.values())
    prefixes: dict[str, str] = {}
    for name, meta in metas.items():
        prefix = base[name]
        if counts[prefix] > 1:
            rank = f" r{meta['rank']}" if meta.get("rank") else ""
            prefix = f"{prefix}({meta.get('strategy', '?')}{rank})"
        candidate, k = prefix, 2
        while candidate in prefixes.values():  # the same dataset, strategy and rank twice
            candidate, k = f"{prefix}#{k}", k + 1
        prefixes[name] = candidate
    return {
        name: AdapterTask(prefixes[name], meta["task"], tuple(json.loads(meta["class_names"])))
        for name, meta in metas.items()
    }


def header(tasks: Mapping[str, AdapterTask]) -> list[str]:
    columns = ["path"]
    for task in tasks.values():
        columns += [f"{task.prefix}:{c}" for c in task.class_names] + [f"{task.prefix}:predicted"]
    return columns


def predicted(probs: torch.Tensor, task: AdapterTask, threshold: float) -> list[str]:
    """One decision per row of ``probs`` (N x C); see the module docstring."""
    names = task.class_names
    if task.type == "multilabel":
        return [
            LABEL_SEPARATOR.join(n for n, p in zip(names, row, strict=True) if p >= threshold)
            for row in probs.tolist()
        ]
    if task.type == "binary":
        return [names[1] if p >= threshold else names[0] for p in probs[:, 1].tolist()]
    return [names[i] for i in probs.argmax(dim=1).tolist()]


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise UserError(
            f"threshold={threshold!r} must be a probability strictly between 0 and 1 (default 0.5)."
        )
    return float(threshold)


def rows(
    files: Sequence[Path],
    probs: Mapping[str, torch.Tensor],
    tasks: Mapping[str, AdapterTask],
    threshold: float,
) -> list[list[str]]:
    """The CSV's rows, in ``header``'s column order."""
    decisions = {name: predicted(probs[name], tasks[name], threshold) for name in tasks}
    out = []
    for i, file in enumerate(files):
        row = [str(file)]
        for name in tasks:
            row += [f"{v:.6f}" for v in probs[name][i].tolist()] + [decisions[name][i]]
        out.append(row)
    return out
