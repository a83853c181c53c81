"""DDP scaling on the embedded task: 1 vs N processes, training images/s and scaling efficiency.

Each arm is the real command, ``python -m src.train`` with ``trainer=ddp`` (Lightning DDP: gloo on CPU,
NCCL on GPUs), tiny backbone, LoRA r=4, the synthetic dataset, per-process batch ``--batch``, one warm-up
epoch then ``--epochs`` timed ones. Rank 0 times the training batches of each epoch between two barriers
(bench/ddp_timer.py: validation, checkpoints and start-up are outside the window). images/s = images of
the epoch (DistributedSampler shards, padding included) / seconds; efficiency = (images/s with N) /
(N x images/s with 1). The arms alternate over ``--rounds`` rounds and the median epoch is reported, so
load from other jobs on a shared machine hits every arm alike.

On CPU every process gets ``--threads`` threads (default 1), so N processes use N times the cores of one:
the number measures how well DDP spreads the work, not what one process could do with all cores.

    python bench/bench_ddp.py [--device cpu|cuda] [--gpus 1,2] [--procs 1,2] [--rounds 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from write_result import write_result  # noqa: E402


def run_arm(n: int, args: argparse.Namespace, tmp: Path) -> list[float]:
    """Seconds of each timed epoch and the images per epoch, for one run with ``n`` processes."""
    out = tmp / f"timer_{n}_{os.urandom(4).hex()}.jsonl"
    device = (
        ["trainer.accelerator=cpu", "trainer.precision=32-true"]
        if args.device == "cpu"
        else ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed"]
    )
    command = [
        sys.executable, "-m", "src.train",
        "trainer=ddp", f"trainer.devices={n}", *device,
        f"trainer.max_epochs={args.epochs + 1}", "test=false", "logger=none",
        f"dataset.sizes.train={args.train}", "dataset.sizes.val=32", "dataset.sizes.test=32",
        f"dataset.batch_size={args.batch}", f"dataset.num_workers={args.workers}",
        "callbacks.last_checkpoint.every_n_train_steps=0",
        "+callbacks.timer._target_=bench.ddp_timer.EpochTimer", f"+callbacks.timer.out={out}",
        f"paths.log_dir={tmp}", f"hydra.run.dir={tmp / f'run_{out.stem}'}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{n} processes failed:\n{result.stderr[-3000:]}")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return [(line["images"] / line["seconds"]) for line in lines if line["epoch"] >= 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--procs", default="1,2", help="process counts on CPU")
    p.add_argument("--gpus", default=None, help="GPU counts with --device cuda (default: 1 and all)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)")
    p.add_argument("--train", type=int, default=512, help="training images per epoch (all processes)")
    p.add_argument("--batch", type=int, default=32, help="batch per process")
    p.add_argument("--workers", type=int, default=0, help="dataset.num_workers per process")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per process (CPU)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ddp.md"))
    args = p.parse_args()
    if args.device == "cuda":
        import torch

        count = torch.cuda.device_count()
        counts = [int(c) for c in (args.gpus or f"1,{count}").split(",")]
        device_name = f"{count} x {torch.cuda.get_device_name(0)}"
    else:
        counts = [int(c) for c in args.procs.split(",")]
        device_name = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    counts = sorted(set(counts))

    speeds: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in counts if r % 2 == 0 else counts[::-1]:
                speeds[n] += run_arm(n, args, Path(tmp))
                print(f"round {r}: {n} processes {statistics.median(speeds[n]):.1f} images/s", flush=True)

    base = statistics.median(speeds[counts[0]]) / counts[0]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        "| processes | images/s (median epoch) | epochs timed | speed-up | scaling efficiency |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in counts:
        ips = statistics.median(speeds[n])
        rows.append(
            f"| {n} | {ips:.1f} | {len(speeds[n])} | {ips / (base * counts[0]):.2f}x | {ips / (n * base):.0%} |"
        )
    text = "\n".join(
        [
            f"# DDP scaling ({args.device})",
            "",
            f"{when}, {device_name}; `python bench/bench_ddp.py {' '.join(sys.argv[1:])}`.",
            f"Embedded task, tiny backbone, LoRA r=4, {args.train} training images, batch {args.batch} per "
            f"process, {args.workers} loader workers, {args.threads} thread(s) per process (CPU); "
            f"{args.rounds} alternating rounds x {args.epochs} timed epochs.",
            "",
            *rows,
            "",
        ]
    )
    write_result(Path(args.out), text)


if __name__ == "__main__":
    main()
