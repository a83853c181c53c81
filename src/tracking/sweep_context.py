"""What the jobs of a multirun share through the sweep dir: the parent MLflow run and the job records.

The sweep callback runs on the machine that launches the sweep; the jobs may run in worker processes
(joblib) or on other nodes (SLURM). Files in the sweep dir reach all of them, so the parent run is handed
to the jobs in ``<sweep dir>/.medpeft/sweep.json`` and each job leaves ``.medpeft/jobs/<num>.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from src.summary import write_json

STATE_DIR = ".medpeft"


@dataclass(frozen=True)
class SweepContext:
    sweep_id: str
    tracking_uri: str
    experiment_name: str
    experiment_id: str
    parent_run_id: str
    job_num: int | None = None

    def job_tags(self) -> dict[str, str]:
        return {"sweep_id": self.sweep_id, "job": str(self.job_num)}


def sweep_file(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / STATE_DIR / "sweep.json"


def jobs_dir(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / STATE_DIR / "jobs"


def write_sweep(sweep_dir: str | Path, context: SweepContext) -> None:
    write_json(sweep_file(sweep_dir), asdict(context))


def read_sweep(sweep_dir: str | Path) -> SweepContext | None:
    path = sweep_file(sweep_dir)
    return SweepContext(**json.loads(path.read_text())) if path.is_file() else None


def current_sweep() -> SweepContext | None:
    """The sweep this process runs a job of, or None outside a multirun (or a sweep without MLflow)."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    context = read_sweep(hydra_cfg.sweep.dir)
    if context is None:
        return None
    return SweepContext(**{**asdict(context), "job_num": hydra_cfg.job.num})
