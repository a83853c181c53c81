"""What a user reads: one log line per epoch in a file, config typos reported before the heavy imports,
and Lightning's noise filtered by exact message only."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest

from src.callbacks.progress import ProgressLog, duration
from src.config import PROJECT_ROOT
from src.quiet import RANK_ZERO_LOGGER, silence_noise
from tests.conftest import TINY_DATA

EPOCH_LINE = re.compile(
    r"epoch (\d+)/2  step (\d+)  train/loss ([\d.]+)  val/auroc ([\d.]+)  val/acc [\d.]+ .*  [\d.]+ s  ETA [\d.]+ s$"
)


def test_stdout_to_a_file_gets_one_line_per_epoch_and_no_noise(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:  # as nohup / SLURM redirect it
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "src.train",
                "debug=limit",
                *TINY_DATA,
                "logger=none",
                f"paths.log_dir={tmp_path}",
            ],
            cwd=PROJECT_ROOT,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "HYDRA_FULL_ERROR": "0"},
            timeout=300,
        )
    text, errors = out.read_text(), err.read_text()
    assert code == 0, errors[-2000:]
    epochs = [m.groups() for line in text.splitlines() if (m := EPOCH_LINE.search(line))]
    assert [(e, s) for e, s, _, _ in epochs] == [("1", "3"), ("2", "6")]  # debug=limit: 2 epochs x 3 batches
    [metrics_file] = (tmp_path / "train" / "runs").glob("*/metrics.json")
    best = json.loads(metrics_file.read_text())["val/auroc"]  # the best epoch, re-validated
    assert max(float(a) for *_, a in epochs) == pytest.approx(best, abs=1e-4)
    both = text + errors
    assert "it/s" not in both and "v_num" not in both  # no rich progress-bar frames in a file
    assert "Tip:" not in both and "FLOPs" not in both and "Flops" not in both
    assert "Trainable params" in text  # the model summary itself stays


def test_a_typo_in_a_config_group_fails_before_torch_is_imported(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "src.train", "peft=lroa", f"paths.log_dir={tmp_path}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.count("Could not find 'peft/lroa'") == 1 and "Available options" in result.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "import time:" in line
    }
    assert "hydra" in imported and not imported & {"torch", "lightning", "mlflow", "timm"}
    assert not (tmp_path / "train").exists()


def test_a_typo_in_one_swept_option_stops_the_sweep_at_once(tmp_path: Path) -> None:
    from src.entry import check_config

    with pytest.raises(SystemExit, match=r"Could not find 'peft/lroa'"):
        check_config("train", ["-m", "peft=lora,lroa", "rank=1,2", f"paths.log_dir={tmp_path}"])
    check_config("train", ["-m", "peft=lora,bitfit", "rank=1,2", "hydra/launcher=joblib"])  # valid: returns


def test_only_the_named_noise_is_silenced(caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_noise()
        warnings.warn(
            "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided during `Trainer` instantiation.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("The 'train_dataloader' does not have many workers", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["The 'train_dataloader' does not have many workers"]
    rank_zero = logging.getLogger(RANK_ZERO_LOGGER)
    with caplog.at_level(logging.INFO, logger=RANK_ZERO_LOGGER):
        rank_zero.info(
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
        )
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_the_terminal_bar_has_no_v_num(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    bar = ProgressLog(tty=True)
    trainer = L.Trainer(logger=CSVLogger(tmp_path), callbacks=[bar], enable_checkpointing=False)
    assert trainer.progress_bar_callback is bar and bar.tty
    assert "v_num" not in bar.get_metrics(trainer, L.LightningModule())
    assert [duration(s) for s in (12.34, 245, 7380)] == ["12.3 s", "4 min 05 s", "2 h 03 min"]
