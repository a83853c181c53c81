"""Which runs may share one table cell: those that differ only in the cell's keys and in seeds / folds.

``src.report`` once pooled a 10-epoch run with a 2-epoch sweep job into one mean ± std because both were
``lora r4`` on the same dataset. Runs are now compared on every logged hyper-parameter (MLflow params, the
flattened config) except the ones that are meant to vary within a cell: seeds and folds (the replicates the
std is over), the keys that already name the row and the column, free-form tags and machine-specific values
(paths, tracking URI; :data:`src.tracking.review.MACHINE_KEYS`). Runs that differ in anything else are kept
apart, each group labelled with the settings that tell it from the others, and the report says what differed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

from mlflow.entities import Run

from src.tracking.review import is_machine_key

# Replicates: what a mean ± std is taken over.
REPLICATE = re.compile(r"(^|[._])seed$|^dataset\.fold$")
# Already part of a row / column label, or not a setting.
LABELLED = {"dataset.name", "dataset.label_fraction", "peft.name", "peft.rank", "rank", "tags"}
# What the console shows and how a backbone is described: no effect on the numbers, so a run from before
# these keys existed still pools with one from after.
COSMETIC = re.compile(r"^callbacks\.(progress|model_summary)\.|^backbone\.description$")
UNSET = "unset"


def is_setting(key: str) -> bool:
    return not (REPLICATE.search(key) or key in LABELLED or COSMETIC.search(key) or is_machine_key(key))


def settings(run: Run) -> dict[str, str]:
    return {k: v for k, v in run.data.params.items() if is_setting(k)}


def split_by_settings(runs: Sequence[Run]) -> list[tuple[dict[str, str], list[Run]]]:
    """Groups of runs with identical settings, each with the settings that differ between the groups
    (``{}`` when there is one group); in the order the groups first appear."""
    groups: dict[tuple[tuple[str, str], ...], list[Run]] = defaultdict(list)
    for run in runs:
        groups[tuple(sorted(settings(run).items()))].append(run)
    if len(groups) == 1:
        return [({}, list(runs))]
    as_dicts = [dict(key) for key in groups]
    keys = sorted({k for d in as_dicts for k in d})
    differ = [k for k in keys if len({d.get(k, UNSET) for d in as_dicts}) > 1]
    return [
        ({k: d.get(k, UNSET) for k in differ}, members)
        for d, members in zip(as_dicts, groups.values(), strict=True)
    ]


def describe(differ: Mapping[str, str], limit: int = 3) -> str:
    """``trainer.max_epochs=2, optim.lr=0.001`` (at most ``limit`` keys, then ``+N more``)."""
    items = [f"{k}={v}" for k, v in differ.items()]
    return ", ".join(items[:limit]) + (f", +{len(items) - limit} more" if len(items) > limit else "")
