"""The Hydra callback that turns a multirun into one sweep: a parent MLflow run, failures, a summary.

Configured in ``conf/hydra/default.yaml`` as ``hydra.callbacks.sweep``. Hydra 1.3 calls
``on_multirun_start`` and ``on_multirun_end`` in the launching process and ``on_job_end`` wherever the job
ran (in-process, a joblib worker, a SLURM node), so everything the jobs share goes through the sweep dir
(:mod:`src.tracking.sweep_context`).

A failing job: its MLflow run is marked FAILED (a FAILED child run is created when the job died before its
logger started), and the failure is recorded. Hydra's sweepers raise the first failed job's exception once
its batch is done, which would skip ``on_multirun_end`` (and with it the summary and the parent run's
status), so by default the failure is taken out of the job's return: the sweep goes on, the failures are
listed at the end and the process exits non-zero. ``hydra.callbacks.sweep.fail_fast=true`` instead closes
the sweep at the first failure and exits.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow import MlflowClient
from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.strategies.base import settings_rank
from src.summary import write_json
from src.tracking.git import git_tags
from src.tracking.review import mark_model_development
from src.tracking.server import check_tracking, is_mlflow_logger, is_remote
from src.tracking.sweep_context import (
    SweepContext,
    jobs_dir,
    read_sweep,
    write_sweep,
)
from src.tracking.sweep_summary import parent_summary, write_summary

log = logging.getLogger(__name__)
MAX_TAG_CHARS = 5000  # MLflow keeps 8,000 characters of a tag value


JOB_FIELDS = ("dataset", "label_fraction", "fold", "backbone", "peft", "rank", "seed")


def job_fields(config: DictConfig) -> dict[str, Any]:
    """What identifies a job in the summary and the tags: strategy, rank, data subset, seed."""
    dataset = config.get("dataset") or {}
    peft = config.get("peft") or {}
    return {
        "dataset": dataset.get("name"),
        "label_fraction": dataset.get("label_fraction"),
        "fold": dataset.get("fold"),
        "backbone": (config.get("backbone") or {}).get("name"),
        "peft": peft.get("name"),
        "rank": settings_rank(peft),  # only where the strategy's size follows the rank
        "seed": config.get("seed"),
    }


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage != "deleted":
        exp_id = found.experiment_id
    else:
        exp_id = client.create_experiment(name, artifact_location=artifact_location)
    mark_model_development(client, exp_id)
    return exp_id


def multi_node_launcher(config: DictConfig) -> str | None:
    """The launcher's name when it runs jobs at the same time on several nodes, where sqlite is unsafe."""
    target = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
    return "SLURM (submitit)" if target.endswith("SlurmLauncher") else None


class SweepCallback(Callback):
    """Groups a multirun's jobs under one parent MLflow run, records failures and writes the summary."""

    def __init__(self, fail_fast: bool = False) -> None:
        self.fail_fast = fail_fast

    # -- launching process -------------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns exceptions from callbacks into warnings; SystemExit is what stops the sweep.
        try:
            self._open(config)
        except UserError as err:
            raise SystemExit(f"error: {err}") from None

    def _open(self, config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_id = f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{uuid.uuid4().hex[:6]}"
        logger_cfg = config.get("logger")
        if not is_mlflow_logger(logger_cfg):
            return
        uri = logger_cfg.tracking_uri
        launcher = multi_node_launcher(config)
        if launcher and not is_remote(uri):
            raise UserError(
                f"logger.tracking_uri={uri} is a local store, and the {launcher} launcher runs jobs on "
                "several nodes at once: sqlite over a network file system can lose or corrupt runs. Start "
                "a tracking server (`make mlflow-server`, or `mlflow server` on a host the nodes reach) and "
                "pass logger.tracking_uri=http://HOST:PORT."
            )
        check_tracking(config)
        if not is_mlflow_logger(config.logger):  # server down and logger.fallback=csv
            return
        client = MlflowClient(uri)
        artifacts = None if is_remote(uri) else logger_cfg.get("artifact_location")
        exp_id = experiment_id(client, logger_cfg.experiment_name, artifacts)
        overrides = " ".join(OmegaConf.to_container(config.hydra.overrides.task))
        parent = client.create_run(
            exp_id,
            run_name=f"sweep_{sweep_id}",
            tags={
                "sweep_id": sweep_id,
                "sweep_role": "parent",
                "sweep_overrides": overrides[:MAX_TAG_CHARS],
                "sweep_dir": str(sweep_dir),
                **git_tags(),
            },
        )
        write_sweep(
            sweep_dir,
            SweepContext(sweep_id, uri, logger_cfg.experiment_name, exp_id, parent.info.run_id),
        )
        log.info("sweep %s: MLflow parent run %s in experiment %s", sweep_id, parent.info.run_id, exp_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failures = self._close(Path(config.hydra.sweep.dir))
        if failures:
            raise SystemExit(f"error: {failures}")

    def _close(self, sweep_dir: Path, stopped: bool = False) -> str:
        """Summary, parent run status; returns the failure report ('' when every job finished)."""
        records = [json.loads(p.read_text()) for p in sorted(jobs_dir(sweep_dir).glob("*.json"))]
        records.sort(key=lambda r: r["job"])
        files = write_summary(records, sweep_dir)
        failed = [r for r in records if r["status"] != "COMPLETED"]
        context = read_sweep(sweep_dir)
        if context is not None:
            client = MlflowClient(context.tracking_uri)
            for path in files:
                client.log_artifact(context.parent_run_id, str(path))
            client.set_tag(context.parent_run_id, "sweep_failed_jobs", str(len(failed)))
            log_parent_summary(client, context.parent_run_id, records)
            status = "FAILED" if failed else "FINISHED"
            client.set_terminated(context.parent_run_id, status)
        print(f"sweep summary: {files[0].with_suffix('.md')}", flush=True)
        if not failed:
            return ""
        lines = [f"job {r['job']} ({' '.join(r['overrides'])}): {r['error']}" for r in failed]
        head = f"{len(failed)} of {len(records)} sweep jobs failed"
        if stopped:
            head += "; stopped at the first failure (hydra.callbacks.sweep.fail_fast=true)"
        return head + ":\n  " + "\n  ".join(lines)

    # -- job process --------------------------------------------------------------------------------
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        num = int(config.hydra.job.num)
        failed = job_return.status == JobStatus.FAILED
        # The exception itself; the public `return_value` re-raises it.
        error = job_return._return_value if failed else None
        record = {
            "job": num,
            "overrides": list(job_return.overrides or []),
            "status": "FAILED" if failed else "COMPLETED",
            "output_dir": config.hydra.runtime.output_dir,
            "error": f"{type(error).__name__}: {error}" if failed else None,
            **job_fields(config),
        }
        context = read_sweep(sweep_dir)
        if failed and context is not None:
            mark_failed(context, num, record)
        write_json(jobs_dir(sweep_dir) / f"{num:05d}.json", record)
        if not failed:
            return
        if self.fail_fast:
            raise SystemExit(f"error: {self._close(sweep_dir, stopped=True)}")
        # Recorded; hide it from the sweeper so the other jobs and on_multirun_end still run. NaN is
        # what Optuna's sweeper reads as a failed trial.
        job_return.status = JobStatus.COMPLETED
        job_return.return_value = math.nan


def log_parent_summary(client: MlflowClient, run_id: str, records: list[dict[str, Any]]) -> None:
    """The number of jobs and the best job's metrics on the parent run (see ``parent_summary``)."""
    metrics, tags = parent_summary(records)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v[:MAX_TAG_CHARS]) for k, v in tags.items()],
    )


def mark_failed(context: SweepContext, num: int, record: dict[str, Any]) -> None:
    """Set the job's MLflow run FAILED with the error as a tag; create the run if the job died first."""
    client = MlflowClient(context.tracking_uri)
    runs = client.search_runs(
        [context.experiment_id],
        filter_string=f"tags.sweep_id = '{context.sweep_id}' and tags.job = '{num}'",
    )
    if runs:
        run_id = runs[0].info.run_id
    else:
        tags = {k: str(v) for k, v in record.items() if k in JOB_FIELDS and v is not None}
        run = client.create_run(
            context.experiment_id,
            tags={
                MLFLOW_PARENT_RUN_ID: context.parent_run_id,
                MLFLOW_RUN_NAME: f"job{num}_failed",
                "sweep_id": context.sweep_id,
                "job": str(num),
                **tags,
                **git_tags(),
            },
        )
        run_id = run.info.run_id
    client.set_tag(run_id, "error", record["error"][:MAX_TAG_CHARS])
    if client.get_run(run_id).info.status != RunStatus.to_string(RunStatus.FAILED):
        client.set_terminated(run_id, "FAILED")
