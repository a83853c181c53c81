"""Checkpoint size and save time of every strategy: lean checkpoints vs whole-model checkpoints (ViT-B/16).

For each strategy (``peft=...`` at rank 4) a ViT-B/16 with random weights (no download) trains one optimizer
step at 224 px (batch 2, CPU), so the checkpoint holds real optimizer and scheduler state; then
``trainer.save_checkpoint`` writes ``last.ckpt`` as the last-checkpoint callback does (through
:class:`src.checkpoint_io.AtomicCheckpointIO`: temp file, fsync, rename), alternately lean (the default, see
:mod:`src.lean_checkpoint`) and whole (the module's ``on_save_checkpoint`` patched out: what every checkpoint
held before), ``--repeats`` times each. The first lean save of a process also hashes the frozen weights
(once per run); it is reported on its own. Goal: LoRA r=4 ``last.ckpt`` <= 2 MB and its save >= 50x shorter.

    python bench/bench_checkpoints.py [--repeats 3] [--strategies lora,sparse,...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset
from write_result import write_result

from src.checkpoint_io import AtomicCheckpointIO
from src.config import PROJECT_ROOT
from src.models.module import ClassificationModule
from src.tasks import Task
from src.train import backbone_config, build_model

STRATEGIES = ["linear", "lora", "lora_melo", "dora", "bitfit", "sparse", "full"]


def trained_trainer(
    peft: str, tmp: Path, accelerator: str = "cpu", backbone: str = "vit_base"
) -> tuple[L.Trainer, ClassificationModule]:
    """A trainer that has run one optimizer step of ``peft`` (also used by bench/gpu_check.py on a GPU)."""
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={backbone}", f"peft={peft}", "rank=4"])
    task = Task("binary", ("normal", "finding"))
    model, _ = build_model(
        cfg, task
    )  # sparse: placeholder positions (same size as after its importance pass)
    module = ClassificationModule(
        model, task, OmegaConf.to_container(cfg.optim, resolve=True), backbone_config(cfg)
    )
    size = cfg.backbone.img_size
    data = TensorDataset(torch.randn(2, 3, size, size), torch.tensor([0, 1]))
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision="bf16-mixed" if accelerator == "gpu" else "32-true",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, DataLoader(data, batch_size=2))
    return trainer, module


def timed_save(trainer: L.Trainer, path: Path, lean: bool) -> tuple[float, int, float]:
    """(wall seconds, bytes, CPU seconds of this process) of one save."""
    whole = mock.patch.object(ClassificationModule, "on_save_checkpoint", lambda self, ckpt: None)
    with contextlib.nullcontext() if lean else whole:
        t, cpu = time.perf_counter(), time.process_time()
        trainer.save_checkpoint(path, weights_only=False)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    size = path.stat().st_size
    path.unlink()
    return seconds, size, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "checkpoints.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for peft in args.strategies.split(","):
            trainer, module = trained_trainer(peft, tmp)
            trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
            path = tmp / "last.ckpt"
            first = timed_save(trainer, path, lean=True)[0]  # hashes the frozen weights once
            lean, whole = [], []
            for i in range(args.repeats):  # alternate the order, so drift in the machine's load cancels
                for kind in ("lean", "whole") if i % 2 == 0 else ("whole", "lean"):
                    (lean if kind == "lean" else whole).append(timed_save(trainer, path, kind == "lean"))
            rows.append(
                {
                    "peft": peft,
                    "trainable": trainable,
                    "lean_bytes": lean[0][1],
                    "whole_bytes": whole[0][1],
                    "first": first,
                    "lean_s": statistics.median(s for s, _, _ in lean),
                    "whole_s": statistics.median(s for s, _, _ in whole),
                    "lean_cpu": statistics.median(c for _, _, c in lean),
                    "whole_cpu": statistics.median(c for _, _, c in whole),
                }
            )
            print(rows[-1], flush=True)
            del trainer, module
    lora = next((r for r in rows if r["peft"] == "lora"), None)
    lines = [
        f"# Checkpoint size and save time, lean vs whole ({time.strftime('%Y-%m-%d')}, CPU {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {os.cpu_count()} cores)",
        "",
        f"`python bench/bench_checkpoints.py --repeats {args.repeats}`: ViT-B/16 at 224 px, random weights, "
        "rank 4, one AdamW step trained; `trainer.save_checkpoint` of `last.ckpt` through the atomic, fsync'ed "
        f"writer; median of {args.repeats} saves of each kind, alternating. Whole = the checkpoint before lean "
        "checkpoints (all weights). First lean save = the first of a process: it also hashes the frozen weights. "
        "CPU = this process's CPU time during the save (wall time minus waiting for the disk and for a core).",
        "",
        "| peft | trainable | lean MB | whole MB | lean save | whole save | whole / lean | first lean save "
        "| lean CPU | whole CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['peft']} | {r['trainable']:,} | {r['lean_bytes'] / 1e6:.2f} | {r['whole_bytes'] / 1e6:.1f} | "
            f"{1e3 * r['lean_s']:.1f} ms | {1e3 * r['whole_s']:.0f} ms | {r['whole_s'] / r['lean_s']:.0f}x | "
            f"{1e3 * r['first']:.0f} ms | {1e3 * r['lean_cpu']:.1f} ms | {1e3 * r['whole_cpu']:.0f} ms |"
            for r in rows
        ),
    ]
    if lora is not None:
        lines += [
            "",
            f"**LoRA r=4: `last.ckpt` {lora['lean_bytes'] / 1e6:.2f} MB** (goal <= 2 MB; whole "
            f"{lora['whole_bytes'] / 1e6:.0f} MB), **save {lora['whole_s'] / lora['lean_s']:.0f}x shorter** "
            f"(goal >= 50x).",
        ]
    write_result(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
