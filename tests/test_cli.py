"""The command line as a user meets it: a two-rank sweep, and short errors instead of tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_DATA, run_cli


def test_two_rank_multirun_gives_two_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "rank=1,2",
        "debug=limit",
        *TINY_DATA,
        f"hydra.sweep.dir={sweep}",
        f"paths.log_dir={tmp_path}",
        "logger=mlflow",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(sweep.glob("*/metrics.json"))
    assert [p.parent.name for p in runs] == ["0_lora_r1", "1_lora_r2"]
    counts = [json.loads(p.read_text())["trainable_params"] for p in runs]
    assert counts[1] - 386 == 2 * (counts[0] - 386)  # LoRA weights double with the rank; head (386) fixed
    ids = {json.loads(p.read_text())["mlflow_run_id"] for p in runs}
    assert len(ids) == 2 and None not in ids
    assert "test/auroc" in result.stdout


ERRORS = [
    (["rank=0"], "rank=0 is not a positive integer"),
    (["dataset=sz_cxr", "dataset.root=/nonexistent/sz"], "dataset.root=/nonexistent/sz"),
    (["backbone.img_size=60"], "backbone.img_size=60 is not divisible by the patch size 8"),
    (["peft.target_modules=[query]"], "Available Linear names"),
]


@pytest.mark.parametrize(("overrides", "message"), ERRORS, ids=["rank", "root", "img_size", "targets"])
def test_user_mistakes_end_in_one_clear_paragraph(overrides: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*overrides, "logger=none", f"paths.log_dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert (result.stderr + result.stdout).count(message) == 1  # printed once, not logged and printed
    assert not list((tmp_path / "train" / "runs").glob("*"))  # no run dir with only Hydra's files left


def test_unknown_group_option_gets_hydras_message(tmp_path: Path) -> None:
    result = run_cli("peft=lorax", f"paths.log_dir={tmp_path}")
    assert result.returncode != 0
    assert "Could not find 'peft/lorax'" in result.stderr
    assert "Available options" in result.stderr
