"""`python -m src.eval` reproduces the test metrics a run logged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.errors import UserError
from src.eval import compare, evaluate
from src.stats.predictions import read_predictions
from src.train import train


def test_eval_reproduces_the_logged_test_metrics(make_cfg) -> None:
    cfg = make_cfg("debug=limit")
    logged = train(cfg)
    now, on_disk = evaluate(cfg.paths.output_dir)
    assert on_disk["test/auroc"] == logged["test/auroc"]
    assert set(now) <= {k for k in logged if k.startswith("test/")}
    table, ok = compare(now, on_disk, tolerance=1e-6)
    assert ok, table
    # The run's and eval's predictions: the same cases, the scores behind the logged AUROC.
    run_dir = Path(cfg.paths.output_dir)
    train_pred = read_predictions(run_dir / "predictions_test.csv")
    eval_pred = read_predictions(run_dir / "eval_predictions_test.csv")
    assert train_pred.ids == eval_pred.ids == [str(i) for i in range(32)]
    np.testing.assert_allclose(train_pred.scores, eval_pred.scores, atol=1e-6)
    score, label = train_pred.scores[:, 1], train_pred.labels[:, 1]
    assert roc_auc_reference(score, label) == pytest.approx(logged["test/auroc"], abs=1e-6)
    assert logged["test/auroc_ci_low"] <= logged["test/auroc"] <= logged["test/auroc_ci_high"]
    splits = {s: (run_dir / "splits" / f"{s}.csv").read_text().splitlines() for s in ("train", "val", "test")}
    assert [len(lines) - 1 for lines in splits.values()] == [64, 32, 32]
    assert splits["test"][0] == "id,target:normal,target:opacity"
    assert [line.split(",")[0] for line in splits["test"][1:]] == train_pred.ids


def roc_auc_reference(score: np.ndarray, label: np.ndarray) -> float:
    """Mann-Whitney by counting every (positive, negative) pair, ties one half."""
    pos, neg = score[label == 1], score[label == 0]
    return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


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
