"""A real MLflow tracking server on loopback: a sweep's runs, tags, links and artifacts arrive over HTTP;
an unreachable server is an error at start, or CSV logging with logger.fallback=csv."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from src.errors import UserError
from src.tracking.git import git_tags
from src.tracking.server import check_tracking
from src.train import train
from tests.conftest import TINY_DATA, free_port, run_cli
from tests.test_sweeps import ONE_BATCH, sweep_runs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp}/server.db", "--artifacts-destination", str(tmp / "art")]
    cmd += ["--workers", "1"]
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_sweep_over_http(server: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "optim.lr=1e-3,-1",
        *ONE_BATCH,
        *TINY_DATA,
        f"logger.tracking_uri={server}",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    )
    # One job fails: the sweep finishes the other, lists the failure and exits non-zero.
    assert result.returncode == 1
    assert "1 of 2 sweep jobs failed" in result.stderr and "Invalid learning rate: -1" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store

    client = mlflow.MlflowClient(server)
    parent, (ok, failed) = sweep_runs(server)
    assert parent.info.status == "FAILED" and parent.data.tags["sweep_failed_jobs"] == "1"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "sweep_summary.csv",
        "sweep_summary.md",
        "sweep_summary.png",
    }
    assert failed.info.status == "FAILED" and "Invalid learning rate" in failed.data.tags["error"]

    assert ok.info.status == "FINISHED" and ok.info.artifact_uri.startswith("mlflow-artifacts:")
    assert ok.data.params["optim.lr"] == "0.001" and ok.data.params["peft.rank"] == "4"
    tags = ok.data.tags
    assert (tags["dataset"], tags["peft"], tags["rank"], tags["seed"]) == ("synthetic", "lora", "4", "42")
    assert tags["sweep_id"] == parent.data.tags["sweep_id"] and "fold" not in tags
    for key, value in git_tags().items():  # a git checkout: the commit that ran
        assert tags[key] == value
    on_disk = json.loads((sweep / "0_lora_r4" / "metrics.json").read_text())
    assert ok.data.metrics["test/auroc"] == pytest.approx(on_disk["test/auroc"])
    assert {
        "adapter.safetensors",
        "metrics.json",
        "config.yaml",
        "roc_curves.png",
        "confusion_matrix.png",
    } <= {a.path for a in client.list_artifacts(ok.info.run_id)}
    fetched = mlflow.artifacts.download_artifacts(
        run_id=ok.info.run_id,
        artifact_path="metrics.json",
        dst_path=str(tmp_path / "dl"),
        tracking_uri=server,
    )
    assert json.loads(Path(fetched).read_text()) == on_disk

    # What MLflow 3's UI reads, over its REST API as the browser does.
    experiment = rest(server, "experiments/get-by-name", experiment_name="synthetic")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    parent_rest = rest(server, "runs/get", run_id=parent.info.run_id)["run"]
    parent_metrics = {m["key"]: m["value"] for m in parent_rest["data"]["metrics"]}
    assert parent_metrics["sweep/jobs"] == 2 and parent_metrics["sweep/failed_jobs"] == 1
    # the best (here: the only finished) job's metrics under their own names, and which job it was
    assert parent_metrics["val/auroc"] == pytest.approx(on_disk["val/auroc"])
    assert parent_metrics["test/auroc"] == pytest.approx(on_disk["test/auroc"])
    parent_tags = {t["key"]: t["value"] for t in parent_rest["data"]["tags"]}
    assert parent_tags["best_run_id"] == ok.info.run_id and parent_tags["best_job"] == "0"
    ok_rest = rest(server, "runs/get", run_id=ok.info.run_id)["run"]
    assert ok_rest["info"]["run_name"] == "lora_r4_s42_job0"  # a single run's name carries its start time
    assert failed.info.run_name == "lora_r4_s42_job1"
    inputs = {
        next(t["value"] for t in i["tags"] if t["key"] == "mlflow.data.context"): i["dataset"]
        for i in ok_rest["inputs"]["dataset_inputs"]
    }
    sizes = {split: json.loads(d["profile"])["num_rows"] for split, d in inputs.items()}
    assert sizes == {"train": 64, "val": 32, "test": 32}  # TINY_DATA
    assert {d["name"] for d in inputs.values()} == {"synthetic"}


def rest(server: str, endpoint: str, **query: str) -> dict:
    """GET one MLflow REST endpoint (``/api/2.0/mlflow/<endpoint>``)."""
    url = f"{server}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_fallback_csv_logs_to_csv_when_the_server_is_down(make_cfg) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = make_cfg("debug=limit", "test=false", f"logger.tracking_uri={dead}", logger="mlflow")
    with pytest.raises(UserError, match=r"logger\.tracking_uri=http"):
        check_tracking(cfg.copy())
    cfg.logger.fallback = "csv"
    metrics = train(cfg)
    assert metrics["mlflow_run_id"] is None
    assert (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").is_file()
    assert "val/auroc" in metrics and "test/auroc" not in metrics
    assert not (Path(cfg.paths.output_dir) / "figures").exists()  # no test, no test figures
