"""`python -m src.eval` reproduces the test metrics a run logged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from src.errors import UserError
from src.eval import compare, evaluate
from src.train import train


def test_eval_reproduces_the_logged_test_metrics(make_cfg) -> None:
    cfg = make_cfg("debug=limit")
    logged = train(cfg)
    now, on_disk = evaluate(cfg.paths.output_dir)
    assert on_disk["test/auroc"] == logged["test/auroc"]
    assert set(now) == {k for k in logged if k.startswith("test/")}
    table, ok = compare(now, on_disk, tolerance=1e-6)
    assert ok, table


def test_eval_cli_and_its_errors(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("debug=limit", "dataset=synthetic_multilabel")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    result = subprocess.run(
        [sys.executable, "-m", "src.eval", f"run_dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test/auroc/cavity" in result.stdout and "DIFFERS" not in result.stdout
    assert json.loads((run_dir / "eval.json").read_text())["checkpoint"] == "best"
    last, _ = evaluate(run_dir, "last")
    assert set(last) == set(json.loads((run_dir / "eval.json").read_text())) - {"checkpoint"}
    with pytest.raises(UserError, match="not a finished run"):
        evaluate(tmp_path)
