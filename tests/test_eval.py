"""`python -m src.eval` reproduces the test metrics a run logged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from sklearn.metrics import roc_auc_score

from src.errors import UserError
from src.eval import compare, evaluate
from src.tasks import Task
from src.train import build_model, train


def test_eval_reproduces_the_logged_test_metrics(make_cfg) -> None:
    cfg = make_cfg("debug=limit")
    logged = train(cfg)
    now, on_disk = evaluate(cfg.paths.output_dir)
    assert set(now) == {k for k in logged if k.startswith("test/")}
    table, ok = compare(now, on_disk, tolerance=1e-6)
    assert ok, table
    # An independent recomputation: the saved best checkpoint's predictions on the test split, scored by
    # scikit-learn rather than the torchmetrics path both eval and training use.
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("test")
    task = Task(datamodule.task_type, datamodule.class_names)
    model, _ = build_model(cfg, task)
    state = torch.load(logged["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    scores, targets = [], []
    with torch.no_grad():
        for images, target in datamodule.test_dataloader():
            scores.append(model.eval()(images).softmax(-1)[:, 1])
            targets.append(target)
    auroc = roc_auc_score(torch.cat(targets).numpy(), torch.cat(scores).numpy())
    assert now["test/auroc"] == pytest.approx(auroc, abs=1e-6)


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
