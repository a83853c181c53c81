"""Multiruns as one sweep: parent/child MLflow runs, failures, summary; parallel, Optuna and submitit."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from src.errors import UserError
from src.tracking.sweep import SweepCallback, mark_failed
from src.tracking.sweep_context import read_sweep
from tests.conftest import CONF, TINY_DATA, free_port, run_cli

# One epoch of one batch each: enough to create, log and finish a run.
ONE_BATCH = [
    "debug=limit",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


def sweep_runs(uri: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1  # every other run is nested under the sweep
    return parents[0], sorted(children, key=lambda r: int(r.data.tags["job"]))


def test_parallel_optuna_sweep_on_sqlite_loses_no_run(tmp_path: Path) -> None:
    # Optuna proposes 3 trials at once and joblib runs them on 2 worker processes, all into one sqlite store.
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *ONE_BATCH,
        *TINY_DATA,
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert parent.info.status == "FINISHED"
    assert [(c.data.tags["job"], c.info.status) for c in children] == [(str(i), "FINISHED") for i in range(3)]
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    for row, child in zip(rows, children, strict=True):
        assert child.data.tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert row["rank"] == child.data.tags["rank"] == child.data.params["peft.rank"]
        assert float(row["test/auroc"]) == pytest.approx(child.data.metrics["test/auroc"], abs=1e-4)
    assert (sweep / "figures" / "sweep_summary.png").read_bytes().startswith(b"\x89PNG")
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(c.data.metrics["val/auroc"] for c in children))
    assert (
        set(best["best_params"]) == {"optim.lr", "rank"} and 1e-5 <= best["best_params"]["optim.lr"] <= 1e-2
    )


def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "rank=1,2",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "debug=fdr",
        "logger=none",
        *TINY_DATA,
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0_lora_r1", "1_lora_r2"]
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # ran as submitit jobs
    assert len(list(csv.DictReader((sweep / "sweep_summary.csv").open()))) == 2


def compose_sweep(tmp_path: Path, *overrides: str) -> DictConfig:
    """The multirun config as the sweep callback receives it, hydra node included."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            "train",
            [f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/sweep", *overrides],
            return_hydra_config=True,
        )


def test_slurm_launcher_refuses_a_sqlite_store(tmp_path: Path) -> None:
    cfg = compose_sweep(tmp_path, "hydra/launcher=slurm")
    with pytest.raises(SystemExit, match="is a local store, and the SLURM") as stop:
        SweepCallback().on_multirun_start(cfg)
    assert "logger.tracking_uri=http://HOST:PORT" in str(stop.value)
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_server_stops_a_sweep_at_start(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit, match=f"logger.tracking_uri={dead} cannot be reached") as stop:
        SweepCallback().on_multirun_start(compose_sweep(tmp_path, f"logger.tracking_uri={dead}"))
    assert "logger.fallback=csv" in str(stop.value)
    # With the fallback the sweep starts without a parent run; each job falls back to CSV.
    SweepCallback().on_multirun_start(
        compose_sweep(tmp_path, f"logger.tracking_uri={dead}", "logger.fallback=csv")
    )
    assert not (tmp_path / "sweep" / ".medpeft" / "sweep.json").exists()


def test_fail_fast_closes_the_sweep_at_the_first_failure(tmp_path: Path) -> None:
    # What Hydra's launcher hands the callback after a job that died before its logger started.
    cfg = compose_sweep(tmp_path, "rank=0", "hydra.callbacks.sweep.fail_fast=true")
    with open_dict(cfg):
        cfg.hydra.mode, cfg.hydra.job.num = RunMode.MULTIRUN, 0
        cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / "0_lora_r0")
    callback = instantiate(cfg.hydra.callbacks.sweep)
    callback.on_multirun_start(cfg)
    failure = JobReturn(overrides=["rank=0"], status=JobStatus.FAILED)
    failure.return_value = UserError("rank=0 is not a positive integer.")
    with pytest.raises(SystemExit, match="1 of 1 sweep jobs failed; stopped at the first failure") as stop:
        callback.on_job_end(cfg, failure)
    assert "job 0 (rank=0): UserError: rank=0 is not a positive integer" in str(stop.value)
    parent, [child] = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db")
    # No run existed: the FAILED child is created for it, with the error and the job's tags.
    assert parent.info.status == "FAILED" and child.info.status == "FAILED"
    assert "rank=0 is not a positive integer" in child.data.tags["error"]
    assert (child.data.tags["peft"], child.data.tags["job"], child.data.tags["rank"]) == ("lora", "0", "0")
    [row] = csv.DictReader((tmp_path / "sweep" / "sweep_summary.csv").open())
    assert row["status"] == "FAILED" and "rank=0" in row["error"]

    # A job that failed after its logger started: that run is marked, not duplicated.
    context = read_sweep(tmp_path / "sweep")
    client = mlflow.MlflowClient(context.tracking_uri)
    running = client.create_run(context.experiment_id, tags={"sweep_id": context.sweep_id, "job": "1"})
    mark_failed(context, 1, {"error": "RuntimeError: boom"})
    run = client.get_run(running.info.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"
    assert len(client.search_runs([context.experiment_id])) == 3
