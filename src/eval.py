"""Re-evaluate a finished run: ``python -m src.eval run_dir=outputs/train/runs/<run>``.

Rebuilds the dataset and model from the run's resolved ``config.yaml``, loads its best (or last, or a given)
checkpoint, runs the test split and prints each test metric beside the value in the run's ``metrics.json``.
Checkpoints hold no frozen weights: those come from the rebuilt backbone, whose checksum must match the run's
(:mod:`src.lean_checkpoint`).
Exits non-zero when any differs by more than ``tolerance``. Writes ``eval.json`` and the checkpoint's test
predictions, ``eval_predictions_test.csv`` (compare them with ``python -m src.compare``), into the run dir.
"""

from __future__ import annotations

if __name__ == "__main__":  # config errors in a second, before the heavy imports below (src/entry.py)
    from src.entry import check_config

    check_config("eval")

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from src.checkpoint_io import read_checkpoint
from src.config import hydra_entry, instantiate_user
from src.errors import UserError
from src.models.module import ClassificationModule
from src.quiet import silence_noise
from src.stats.predictions import write_predictions
from src.stats.run import split_predictions
from src.summary import write_json
from src.tasks import Task
from src.train import backbone_config, build_model

log = logging.getLogger(__name__)


def find_checkpoint(run_dir: Path, which: str, logged: dict[str, Any]) -> Path:
    if which == "best":
        path = Path(logged["best_checkpoint"]) if logged.get("best_checkpoint") else None
    elif which == "last":
        path = run_dir / "checkpoints" / "last.ckpt"
    else:
        path = Path(which)
    if path is None or not path.is_file():
        raise UserError(
            f"checkpoint={which}: no such checkpoint for {run_dir} ({path}). Runs with callbacks=none or "
            "debug=fdr keep none; use checkpoint=last or checkpoint=PATH."
        )
    return path


def evaluate(run_dir: str | Path, checkpoint: str = "best") -> tuple[dict[str, float], dict[str, Any]]:
    """(test metrics now, metrics.json as logged) for a finished run dir; writes the test predictions of
    the checkpoint tested to ``eval_predictions_test.csv`` there (the format of ``predictions_test.csv``)."""
    run_dir = Path(run_dir)
    config, metrics_file = run_dir / "config.yaml", run_dir / "metrics.json"
    if not config.is_file() or not metrics_file.is_file():
        raise UserError(f"run_dir={run_dir} is not a finished run: it needs config.yaml and metrics.json.")
    cfg = OmegaConf.load(config)
    logged = json.loads(metrics_file.read_text())
    ckpt = find_checkpoint(run_dir, checkpoint, logged)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate_user(cfg.dataset)
    datamodule.check()
    task = Task(
        datamodule.task_type,
        datamodule.class_names,
        cfg.loss.label_smoothing,
        OmegaConf.select(cfg, "task.binary_head", default="softmax"),
    )
    model, _ = build_model(cfg, task)
    module = ClassificationModule(
        model, task, OmegaConf.to_container(cfg.optim, resolve=True), backbone_config(cfg)
    )
    read_checkpoint(ckpt, module)  # a clear error for a foreign, damaged or unsafe file, before Lightning
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    now = trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False, weights_only=True)[
        0
    ]
    split = split_predictions(datamodule, "test", module.test_predictions, task)
    if split is not None:
        write_predictions(split, run_dir / "eval_predictions_test.csv")
    return {k: float(v) for k, v in now.items()}, logged


def compare(now: dict[str, float], logged: dict[str, Any], tolerance: float) -> tuple[str, bool]:
    rows, ok = [], True
    for key in sorted(now):
        before = logged.get(key)
        diff = abs(now[key] - before) if isinstance(before, (int, float)) else float("nan")
        same = diff <= tolerance
        ok &= same
        shown = f"{before:.6f}" if isinstance(before, (int, float)) else "n/a"
        rows.append(f"{key:<28} {now[key]:.6f}   logged {shown}   {'ok' if same else 'DIFFERS'}")
    return "\n".join(rows), ok


@hydra_entry("eval")
def main(cfg: DictConfig) -> None:
    silence_noise()
    try:
        now, logged = evaluate(cfg.run_dir, cfg.checkpoint)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    table, ok = compare(now, logged, cfg.tolerance)
    write_json(Path(cfg.run_dir) / "eval.json", {"checkpoint": cfg.checkpoint, **now})
    print(table, flush=True)
    if not ok:
        raise SystemExit(f"error: re-evaluation differs from the logged metrics by more than {cfg.tolerance}")


if __name__ == "__main__":
    main()
