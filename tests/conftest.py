"""Shared fixtures: compose the real Hydra config with tiny data and outputs under tmp_path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from torch import nn

from src.config import PROJECT_ROOT, register_resolvers
from src.models.backbone import create_backbone

CONF = str(PROJECT_ROOT / "conf")
register_resolvers()  # the tests compose conf/ directly, as the entry points do after hydra_entry
# The smallest timm ViT the unit tests build (2 blocks, width 192, 8 px patches at 32 px): the one definition
# every test file uses, through the `tiny_model` fixture or `create_backbone(**TINY)`.
TINY = {"name": "vit_tiny_patch16_224", "img_size": 32, "model_kwargs": {"patch_size": 8, "depth": 2}}
# Small enough for a CPU test, large enough that every batch holds both classes.
TINY_DATA = [
    "dataset.sizes.train=64",
    "dataset.sizes.val=32",
    "dataset.sizes.test=32",
    "dataset.batch_size=16",
]


def compose_train(
    overrides: list[str], tmp_path: Path | None = None, config_name: str = "train"
) -> DictConfig:
    """The config exactly as `python -m src.<config_name> <overrides>` would see it (hydra node aside)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.log_dir = str(tmp_path / "outputs")
            cfg.paths.data_dir = str(tmp_path / "data")  # dataset caches land here, not in the repository
    return cfg


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mlflow.set_tracking_uri`` (Lightning's MLFlowLogger calls it) exports MLFLOW_TRACKING_URI for child
    processes; one test's store must not become the next test's default (``src.report`` follows the variable)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose with tiny synthetic data, no logger unless asked, outputs under tmp_path."""

    def make(*overrides: str, logger: str = "none") -> DictConfig:
        return compose_train([*TINY_DATA, f"logger={logger}", *overrides], tmp_path)

    return make


@pytest.fixture
def tiny_model() -> Callable[..., nn.Module]:
    """``tiny_model(num_classes=2, **create_backbone kwargs)``: a fresh TINY classifier, random weights."""

    def make(num_classes: int = 2, **kwargs: object) -> nn.Module:
        return create_backbone(num_classes=num_classes, **{**TINY, **kwargs})[0]

    return make


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m src.train ...` as a user would, capturing its output."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=cwd or PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A loopback port nothing listens on (for a test server, or a dead tracking URI)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recorded_test_cases(run_dir: str | Path) -> int:
    """How many test cases a finished run scored, after checking that ``predictions_test.csv`` lists the first
    cases of ``splits/test.csv`` in order with the same labels (what a layout read is what was scored), each
    with a probability per class. Fails when the run scored nothing."""
    import csv

    def rows(name: str) -> list[dict[str, str]]:
        with (Path(run_dir) / name).open(newline="") as f:
            return list(csv.DictReader(f))

    split, scored = rows("splits/test.csv"), rows("predictions_test.csv")
    assert 0 < len(scored) <= len(split)
    targets = [c for c in split[0] if c.startswith("target:")]
    assert targets and all(f"score:{c.removeprefix('target:')}" in scored[0] for c in targets)
    for case, row in zip(split, scored, strict=False):
        assert row["id"] == case["id"] and all(row[c] == case[c] for c in targets)
        assert all(0.0 <= float(v) <= 1.0 for k, v in row.items() if k.startswith("score:"))
    return len(scored)
