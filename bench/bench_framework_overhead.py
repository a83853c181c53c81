"""Framework overhead: one training step of our LightningModule vs a plain PyTorch loop doing the same work.

Same model (the default `tiny` backbone + LoRA r=4), same batches, same AdamW + warm-up/cosine schedule,
same gradient clipping. Runs alternate (plain, Lightning, plain, ...) so drift hits both; the step time is
the median over the timed steps of each run, and the reported figure is the median over repetitions.
Goal: Lightning / plain <= 1.05.

    python bench/bench_framework_overhead.py [--steps 30] [--reps 5] [--batch 64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from itertools import pairwise
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader
from write_result import write_result

from src.config import PROJECT_ROOT
from src.data.synthetic import SyntheticDataModule
from src.models.module import ClassificationModule
from src.optim import build_optimizer, warmup_cosine
from src.tasks import Task
from src.train import build_model

WARMUP = 5


def setup(batch: int, steps: int):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"dataset.batch_size={batch}", f"dataset.sizes.train={batch * steps}"]
        )
    dm = SyntheticDataModule(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    dm.setup("fit")
    task = Task(dm.task_type, dm.class_names)
    return cfg, dm, task


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.stamps.append(time.perf_counter())


def step_times(stamps: list[float]) -> float:
    gaps = [b - a for a, b in pairwise(stamps)][WARMUP:]
    return statistics.median(gaps)


def run_lightning(cfg, dm, task, steps: int) -> float:
    torch.manual_seed(0)
    model, _ = build_model(cfg, task)
    module = ClassificationModule(model, task, dict(cfg.optim))
    clock = StepClock()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return step_times(clock.stamps)


def run_plain(cfg, dm, task, steps: int) -> float:
    torch.manual_seed(0)
    model, _ = build_model(cfg, task)
    model.train()
    optim = dict(cfg.optim)
    warmup, min_lr = optim.pop("warmup_fraction"), optim.pop("min_lr")
    optim.pop("warmup_epochs", None)
    optimizer = build_optimizer(model, **optim)
    scheduler = warmup_cosine(optimizer, steps, round(warmup * steps), min_lr)
    params = [p for p in model.parameters() if p.requires_grad]
    loader: DataLoader = dm.train_dataloader()
    stamps: list[float] = []
    for images, target in loader:
        stamps.append(time.perf_counter())
        loss = task.loss(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        loss.item()  # Lightning reads the loss back for the progress bar and logging too
        if len(stamps) == steps:
            break
    stamps.append(time.perf_counter())
    return step_times(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "framework_overhead.md"
    )
    args = parser.parse_args()
    cfg, dm, task = setup(args.batch, args.steps)
    plain, light = [], []
    for _ in range(args.reps):
        plain.append(run_plain(cfg, dm, task, args.steps))
        light.append(run_lightning(cfg, dm, task, args.steps))
    p, lt = statistics.median(plain), statistics.median(light)
    device = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [
        f"# Framework overhead ({time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__})",
        "",
        f"`python bench/bench_framework_overhead.py --steps {args.steps} --reps {args.reps} --batch {args.batch}`:",
        f"backbone `{cfg.backbone.name}` (tiny preset, {cfg.backbone.img_size} px), LoRA r={cfg.rank}, "
        f"batch {args.batch}, AdamW + cosine, grad clip {cfg.trainer.gradient_clip_val}; median step time.",
        "",
        "| loop | step time (ms) | per repetition (ms) |",
        "|---|---|---|",
        f"| plain PyTorch | {1000 * p:.1f} | {', '.join(f'{1000 * t:.1f}' for t in plain)} |",
        f"| Lightning (ClassificationModule) | {1000 * lt:.1f} | {', '.join(f'{1000 * t:.1f}' for t in light)} |",
        "",
        f"**Overhead: Lightning / plain = {lt / p:.3f}** (goal <= 1.05: {'met' if lt / p <= 1.05 else 'NOT met'}).",
    ]
    text = "\n".join(lines) + "\n"
    write_result(args.out, text)


if __name__ == "__main__":
    main()
