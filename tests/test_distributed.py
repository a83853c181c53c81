"""Lightning DDP for real, on 2 CPU processes: the trainer=ddp preset, spawned and launched as a command."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from src.models.module import ClassificationModule
from src.train import build_trainer
from tests.conftest import TINY_DATA, run_cli
from tests.test_train import build

CPU_DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "debug=fdr"]


def test_ddp_spawn_two_cpu_processes(make_cfg) -> None:
    cfg = make_cfg(*CPU_DDP, "trainer.strategy=ddp_spawn", "callbacks=none")
    dm, task, (model, _) = build(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = build_trainer(cfg)
    trainer.fit(ClassificationModule(model, task, dict(cfg.optim)), datamodule=dm)
    assert trainer.world_size == 2
    assert 0.0 <= float(trainer.callback_metrics["val/auroc"]) <= 1.0  # synced over both processes
    # The step ran in the spawned processes; Lightning hands the trained weights back to this one.
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)


def test_ddp_command_two_cpu_processes_rank_zero_writes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        *CPU_DDP, *TINY_DATA, "logger=none", f"hydra.run.dir={run_dir}", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Both processes trained and tested; only rank 0 went on to write outputs and print the table.
    assert result.stdout.count("trainable parameters:") == 2
    assert sum(line.startswith("run dir") for line in result.stdout.splitlines()) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    assert (run_dir / "figures" / "roc_curves.png").is_file()  # predictions gathered from both processes
