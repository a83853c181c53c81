"""The MLflow review helpers on their own: digests, params without machine paths, run names."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from src.entry import CONF_DIR
from src.tracking.review import run_name, split_digest, split_params


def test_a_cached_split_is_identified_by_its_cache_entry() -> None:
    entry = Path("/cache/sz_cxr/train_252px_gray_0123456789abcdef_fedcba9876543210/images.npy")
    assert split_digest(SimpleNamespace(images=entry), "train", {}) == "0123456789abcdef" + "fedcba9876543210"
    # generated data: the dataset config, so a changed size or seed is a different dataset
    a = split_digest(SimpleNamespace(), "train", {"name": "synthetic", "seed": 0})
    assert a != split_digest(SimpleNamespace(), "train", {"name": "synthetic", "seed": 1})
    assert a != split_digest(SimpleNamespace(), "val", {"name": "synthetic", "seed": 0}) and len(a) == 32


def test_machine_paths_leave_the_params() -> None:
    flat = {
        "optim.lr": "0.001",
        "paths.output_dir": "/runs/a",
        "callbacks.model_checkpoint.dirpath": "/runs/a/checkpoints",
        "logger.run_name": "lora_r4_s42",
        "dataset.root": "/data/sz",
        "dataset.batch_size": "16",
    }
    params, local = split_params(flat)
    assert params == {"optim.lr": "0.001", "dataset.batch_size": "16"}
    assert local["local.paths.output_dir"] == "/runs/a" and len(local) == 4


def test_run_names_differ_between_a_single_run_and_a_sweep_job() -> None:
    when = datetime(2026, 11, 30, 16, 30, 4)
    assert run_name("lora_r4_s42", now=when) == "lora_r4_s42_1130-163004"
    assert run_name("lora_r4_s42", job=3) == "lora_r4_s42_job3"


def test_make_mlflow_ui_takes_the_port() -> None:
    dry = subprocess.run(
        ["make", "-n", "mlflow-ui", "MLFLOW_PORT=5077", "STAMP=Makefile"],  # STAMP: no venv install
        cwd=CONF_DIR.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--port 5077" in dry.stdout
