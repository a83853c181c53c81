"""Task switching with the adapter bank vs rebuilding the model from a full checkpoint (ViT-B/16).

Four LoRA r=4 task adapters (2, 4, 14 and 5 classes) over one ViT-B/16 (random weights: no download).
Side by side in one run: the median latency of `AdapterBank.switch` over many switches, and the median
time to rebuild the model from a full safetensors checkpoint (create the timm model, apply LoRA, load the
~330 MB file); plus the file sizes. Goals: switch <= 10 ms, >= 50x faster than the reload, LoRA r=4
adapter <= 0.6 MB.

    python bench/bench_adapter_bank.py [--switches 400] [--reloads 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file
from write_result import write_result

from src.adapter import save_adapter
from src.bank import AdapterBank
from src.config import PROJECT_ROOT
from src.models.backbone import create_backbone
from src.strategies.lora import LoRA
from src.tasks import Task
from src.train import adapter_metadata

NAME, CLASSES = "vit_base_patch16_224", {"sz_cxr": 2, "blood_cells": 4, "nih_cxr14": 14, "chexpert": 5}


def build(classes: int) -> torch.nn.Module:
    model, _ = create_backbone(NAME, num_classes=classes, img_size=224)
    return LoRA(rank=4, alpha=4).apply(model).eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--switches", type=int, default=400)
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "adapter_bank.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["backbone=vit_base", "peft=lora", "rank=4"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backbone = {k: v for k, v in build(2).state_dict().items() if "lora_" not in k and "head" not in k}
        sizes = {}
        for task, c in CLASSES.items():
            model = build(c)
            model.load_state_dict(backbone, strict=False)
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.normal_(std=0.02)
            task_spec = Task("binary" if c == 2 else "multiclass", tuple(f"class_{i}" for i in range(c)))
            meta = adapter_metadata(cfg, LoRA(rank=4, alpha=4), task_spec)  # what src.train writes
            sizes[task] = save_adapter(model, tmp / f"{task}.safetensors", meta)
        full = tmp / "full.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(full))

        bank = AdapterBank(build(2), LoRA(rank=4, alpha=4))
        bank.model.load_state_dict(backbone, strict=False)
        for task in CLASSES:
            bank.add(task, tmp / f"{task}.safetensors")
        order = list(CLASSES)
        switch = []
        for i in range(args.switches):
            t = time.perf_counter()
            bank.switch(order[i % len(order)])
            switch.append(time.perf_counter() - t)

        reload = []
        for _ in range(args.reloads):
            t = time.perf_counter()
            rebuilt = build(CLASSES["chexpert"])
            rebuilt.load_state_dict(load_file(str(full)))
            reload.append(time.perf_counter() - t)
        full_bytes = full.stat().st_size

    sw, rl = statistics.median(switch), statistics.median(reload)
    lines = [
        f"# Adapter bank vs full reload ({time.strftime('%Y-%m-%d')}, CPU {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})",
        "",
        f"`python bench/bench_adapter_bank.py --switches {args.switches} --reloads {args.reloads}`: ViT-B/16, "
        "LoRA r=4 on qkv, 4 task adapters (2 / 4 / 14 / 5 classes).",
        "",
        "| operation | median | runs |",
        "|---|---|---|",
        f"| `AdapterBank.switch` (LoRA tensors + head) | {1e3 * sw:.3f} ms | {args.switches} |",
        f"| rebuild from full checkpoint (create + LoRA + load) | {1e3 * rl:.0f} ms | {args.reloads} |",
        "",
        f"**Switch is {rl / sw:,.0f}x faster than a reload** (goal >= 50x); switch {1e3 * sw:.3f} ms (goal <= 10 ms).",
        "",
        "| file | size |",
        "|---|---|",
        *(f"| adapter `{t}` ({CLASSES[t]} classes) | {b / 1e6:.3f} MB |" for t, b in sizes.items()),
        f"| full checkpoint | {full_bytes / 1e6:.1f} MB |",
        "",
        f"LoRA r=4 adapter (2 classes): {sizes['sz_cxr'] / 1e6:.3f} MB (goal <= 0.6 MB).",
    ]
    text = "\n".join(lines) + "\n"
    write_result(args.out, text)


if __name__ == "__main__":
    main()
