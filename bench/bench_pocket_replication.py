"""Pocket replication of the papers' claim on the synthetic downstream task with the pocket backbone.

Linear probe, LoRA r=1/4/16, BitFit, sparse (at LoRA r=4's count), SSF and full fine-tuning, each with the same budget of optimizer steps
(same epochs, batch and data) and several training seeds, from the shipped pretrained `tiny` backbone;
LoRA r=4 and full fine-tuning also from random weights, to measure what pretraining contributes.
Writes a table (test AUROC mean ± std, trainable %, adapter size) and a plot of AUROC vs trainable parameters.

    python bench/bench_pocket_replication.py [--seeds 0 1 2] [--epochs 10] [--lr-full 3e-4] [--arms lora ssf]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from src.config import PROJECT_ROOT
from src.train import train

OUT = PROJECT_ROOT / "bench" / "results"
ARMS = [
    ("linear", ["peft=linear"]),
    ("lora r=1", ["peft=lora", "rank=1"]),
    ("lora r=4", ["peft=lora", "rank=4"]),
    ("lora r=16", ["peft=lora", "rank=16"]),
    ("bitfit", ["peft=bitfit"]),
    ("sparse (LoRA r=4's count)", ["peft=sparse", "rank=4"]),
    ("ssf", ["peft=ssf"]),
    ("full", ["peft=full"]),
    # The same two arms without pretraining: what the pocket backbone is worth.
    ("lora r=4, random init", ["peft=lora", "rank=4", "backbone.checkpoint=null"]),
    ("full, random init", ["peft=full", "backbone.checkpoint=null"]),
]


def run(overrides: list[str], tmp: Path) -> dict:
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "logger=none"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
    return train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--lr-full", type=float, default=3e-4, help="full fine-tuning lr (PEFT arms keep the default)"
    )
    parser.add_argument(
        "--arms", nargs="+", default=None, help="only the arms whose label starts with one of these"
    )
    args = parser.parse_args()
    rows = []
    started = time.perf_counter()
    arms = [a for a in ARMS if args.arms is None or a[0].startswith(tuple(args.arms))]
    for label, overrides in arms:
        scores, last = [], {}
        for seed in args.seeds:
            extra = [f"seed={seed}", f"trainer.max_epochs={args.epochs}"]
            if label.startswith("full"):
                extra.append(f"optim.lr={args.lr_full}")
            last = run(
                overrides + extra, OUT / "runs" / f"{''.join(ch for ch in label if ch.isalnum())}_s{seed}"
            )
            scores.append(last["test/auroc"])
        rows.append(
            {
                "strategy": label,
                "auroc_mean": statistics.mean(scores),
                "auroc_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "scores": scores,
                "trainable": last["trainable_params"],
                "trainable_pct": last["trainable_pct"],
                "adapter_kb": last["adapter_bytes"] / 1000,
            }
        )
    minutes = (time.perf_counter() - started) / 60
    write(rows, args, minutes)


def write(rows: list[dict], args: argparse.Namespace, minutes: float) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "pocket_replication.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "strategy",
                "test_auroc_mean",
                "test_auroc_std",
                "seeds",
                "trainable",
                "trainable_pct",
                "adapter_kB",
            ]
        )
        for r in rows:
            w.writerow(
                [r["strategy"], f"{r['auroc_mean']:.4f}", f"{r['auroc_std']:.4f}", " ".join(f"{s:.4f}" for s in r["scores"]),
                 r["trainable"], f"{r['trainable_pct']:.3f}", f"{r['adapter_kb']:.1f}"]
            )  # fmt: skip
    lines = [
        f"# Pocket replication ({time.strftime('%Y-%m-%d')}, 2-core CPU, {minutes:.0f} min)",
        "",
        f"`python bench/bench_pocket_replication.py --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} "
        f"--lr-full {args.lr_full}`: synthetic downstream task (focal opacities), pretrained pocket backbone, "
        f"{args.epochs} epochs of 2,000 images for every arm, test AUROC of the best-val checkpoint; "
        "PEFT arms AdamW lr 3e-3, full fine-tuning lr as given.",
        "",
        "| strategy | test AUROC (mean ± std) | trainable | trainable % | adapter |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['auroc_mean']:.3f} ± {r['auroc_std']:.3f} | {r['trainable']:,} | "
            f"{r['trainable_pct']:.3f}% | {r['adapter_kb']:.1f} kB |"
        )
    (OUT / "pocket_replication.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        marker = "x" if "random" in r["strategy"] else "o"
        ax.errorbar(r["trainable"], r["auroc_mean"], yerr=r["auroc_std"], fmt=marker, capsize=3)
        ax.annotate(
            r["strategy"], (r["trainable"], r["auroc_mean"]), textcoords="offset points", xytext=(5, 5)
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("test AUROC")
    ax.set_title("Pocket replication: AUROC vs trainable parameters")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "pocket_replication.png", dpi=120)


if __name__ == "__main__":
    main()
