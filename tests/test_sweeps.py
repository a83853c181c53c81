"""Multiruns as one sweep: parent/child MLflow runs, failures, summary; parallel, Optuna and submitit."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.tracking.sweep import SweepCallback, mark_failed
from src.tracking.sweep_context import SweepContext
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


def test_parallel_joblib_sweep_on_sqlite_loses_no_run(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "rank=1,2",
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
    assert [(c.data.tags["rank"], c.info.status) for c in children] == [("1", "FINISHED"), ("2", "FINISHED")]
    for child in children:
        assert child.data.tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert {"test/auroc", "trainable_params"} <= set(child.data.metrics)
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2"] and all(r["status"] == "COMPLETED" for r in rows)
    assert float(rows[0]["test/auroc"]) == pytest.approx(children[0].data.metrics["test/auroc"], abs=1e-4)
    assert (sweep / "sweep_summary.png").read_bytes().startswith(b"\x89PNG")


def test_fail_fast_stops_at_the_first_failure(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "rank=0,1",
        "hydra.callbacks.sweep.fail_fast=true",
        *TINY_DATA,
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode != 0
    assert "1 of 1 sweep jobs failed; stopped at the first failure" in result.stderr
    assert "rank=0 is not a positive integer" in result.stderr
    assert not list(sweep.glob("1_*"))  # job 1 never started
    parent, [child] = sweep_runs(f"sqlite:///{tmp_path}/mlflow.db")
    # The job died before its logger started: its FAILED run is created for it, with the error.
    assert parent.info.status == "FAILED" and child.info.status == "FAILED"
    assert "rank=0 is not a positive integer" in child.data.tags["error"]
    assert child.data.tags["peft"] == "lora" and child.data.tags["job"] == "0"


def test_a_failure_after_the_run_started_marks_that_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(exp).info.run_id
    running = client.create_run(exp, tags={"sweep_id": "s", "job": "3"}).info.run_id
    context = SweepContext("s", uri, "e", exp, parent, 3)
    mark_failed(context, 3, {"error": "RuntimeError: boom"})
    run = client.get_run(running)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"
    assert len(client.search_runs([exp])) == 2  # marked, not duplicated
    assert SweepCallback().fail_fast is False  # the default keeps sweeping


def test_optuna_search_three_trials_maximises_val_auroc(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "debug=fdr",
        "logger=none",
        *TINY_DATA,
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(float(r["val/auroc"]) for r in rows), abs=1e-4)
    assert set(best["best_params"]) == {"optim.lr", "rank"}
    assert 1e-5 <= best["best_params"]["optim.lr"] <= 1e-2


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
