"""peft=sparse vs LoRA vs a dense-gradient-mask baseline: step time, peak memory, importance-pass cost.

ViT-S/16 at 224 px, batch 16, random weights (nothing downloaded), AdamW, synthetic batches. Arms:

* ``lora_r4``        LoRA r=4 on every qkv (HF peft), head trains;
* ``sparse_rank``    peft=sparse with LoRA r=4's count (budget=rank: 73,728 on ViT-S), sparse delta parameters;
* ``sparse_0.01%``   peft=sparse at budget 0.0001 of the eligible weights (2,123 on ViT-S);
* ``dense_mask``     GPS-style: the eligible weights train densely, their gradient is masked to the same
                     73,728 entries before the optimizer step (full weight gradients and AdamW state).

Step time: all four arms in one process, one step of each in turn (rotating the order) after a warm-up step,
so load from other jobs on a shared machine hits all arms alike; the median over ``--steps`` rounds.
Peak memory: each arm in its own process (so the peak is its own), over two steps;
on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the first step; on CPU the peak
resident set size (Linux VmHWM, reset through /proc/self/clear_refs) minus the RSS before the first step —
process RSS, so it also counts allocator caching. The importance pass (grad_abs + magnitude, mix 0.5,
``--importance-batches`` batches) is timed once and compared with as many sparse_rank steps.
Goals: sparse step <= 1.2x LoRA and <= 0.7x dense-mask; peak memory <= 1.1x LoRA; importance <= 16 steps.
``--precision bf16-mixed`` runs the training steps under bf16 autocast with fp32 master weights, as the
trainer's ``bf16-mixed`` (the importance pass stays fp32); its result goes to ``sparse_bf16-mixed.md``.

    python bench/bench_sparse.py [--device cpu|cuda] [--precision 32|bf16-mixed] [--steps 4] [--importance-batches 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from write_result import write_result  # noqa: E402

from src.strategies.lora import LoRA  # noqa: E402
from src.strategies.sparse import Sparse  # noqa: E402
from src.strategies.sparse.strategy import sparse_layers  # noqa: E402

# perf_counter, or with --clock cpu this process's CPU time (one thread): immune to other jobs' time slices.
CLOCK = [time.perf_counter]
ARMS = ("lora_r4", "sparse_rank", "sparse_0.01%", "dense_mask")
MODEL, IMG, CLASSES = "vit_small_patch16_224", 224, 2


def status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class PeakMemory:
    """Peak bytes allocated above the level at ``start()``: CUDA allocator stats, or process RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = status_kb("VmRSS") * 1024

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() - self.base
        return status_kb("VmHWM") * 1024 - self.base


def batch(device: torch.device, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, IMG, IMG, generator=g)
    return images.to(device), torch.randint(0, CLASSES, (size,), generator=g).to(device)


def build(arm: str, device: torch.device) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The model of one arm on ``device`` and, for dense_mask, the (weight, mask) pairs."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(MODEL, num_classes=CLASSES, img_size=IMG)
    if arm == "lora_r4":
        return LoRA(rank=4).apply(model).to(device), []
    # Where the entries sit does not change the cost; magnitude selection (mix 0) needs no gradient pass.
    budget = 0.0001 if arm == "sparse_0.01%" else "rank"
    strategy = Sparse(budget=budget, rank=4, importance={"mix": 0.0})
    model = strategy.apply(model)
    strategy.prepare(model, [], F.cross_entropy)
    if arm != "dense_mask":
        return model.to(device), []
    masks = []
    for layer in sparse_layers(model).values():
        _, index = layer.delta.segment(layer.slot)
        mask = torch.zeros(layer.base.weight.numel(), dtype=torch.bool)
        mask[index] = True
        layer.merged = True  # values are zero: the layer is a plain Linear whose weight trains densely
        layer.base.weight.requires_grad_(True)
        masks.append((layer.base.weight, mask.view_as(layer.base.weight)))
    model.sparse_delta.values.requires_grad_(False)
    model = model.to(device)
    return model, [(w, m.to(device)) for w, m in masks]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class ArmRun:
    """One arm's model, optimizer and masks; ``step()`` runs and times one training step."""

    def __init__(self, arm: str, device: torch.device, batch_size: int, precision: str = "32") -> None:
        self.arm, self.device, self.precision = arm, device, precision
        self.model, self.masks = build(arm, device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-3, weight_decay=0.0)
        self.images, self.target = batch(device, batch_size, seed=1)

    def step(self) -> float:
        sync(self.device)
        start = CLOCK[0]()
        with self.autocast():
            loss = F.cross_entropy(self.model(self.images), self.target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for weight, mask in self.masks:  # GPS: full weight gradient, masked before the step
            weight.grad.mul_(mask)
        self.optimizer.step()
        loss.item()
        sync(self.device)
        return CLOCK[0]() - start

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def optimizer_state_bytes(self) -> int:
        states = self.optimizer.state.values()
        return sum(t.numel() * t.element_size() for s in states for t in s.values() if torch.is_tensor(t))


def run_memory(arm: str, device: torch.device, batch_size: int, precision: str) -> dict:
    """Child process: peak memory over two steps (the first allocates the optimizer state)."""
    run = ArmRun(arm, device, batch_size, precision)
    memory = PeakMemory(device)
    memory.start()
    run.step()
    run.step()
    return {
        "arm": arm,
        "peak_bytes": memory.peak(),
        "trainable": sum(p.numel() for p in run.params),
        "optimizer_state_bytes": run.optimizer_state_bytes(),
    }


def run_times(device: torch.device, steps: int, batch_size: int, precision: str) -> dict[str, list[float]]:
    """All arms in this process, one step of each in turn (rotating the order), so load hits all alike."""
    runs = {arm: ArmRun(arm, device, batch_size, precision) for arm in ARMS}
    for run in runs.values():
        run.step()  # warm-up: lazy initialisation, optimizer state
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for i in range(steps):
        for arm in ARMS[i % len(ARMS) :] + ARMS[: i % len(ARMS)]:
            times[arm].append(runs[arm].step())
        print(f"round {i + 1}: " + ", ".join(f"{a} {times[a][-1]:.2f} s" for a in ARMS), flush=True)
    return times


def run_importance(device: torch.device, batches: int, batch_size: int) -> dict:
    import timm

    torch.manual_seed(0)
    strategy = Sparse(budget="rank", rank=4, importance={"batches": batches})  # grad_abs + magnitude, mix 0.5
    model = strategy.apply(timm.create_model(MODEL, num_classes=CLASSES, img_size=IMG))
    data = (batch(torch.device("cpu"), batch_size, seed=100 + i) for i in range(batches))
    sync(device)
    start = CLOCK[0]()
    strategy.prepare(model, data, F.cross_entropy, str(device))
    sync(device)
    return {"arm": "importance", "seconds": CLOCK[0]() - start, "batches": batches}


def child(arm: str, args: argparse.Namespace) -> dict:
    """Run this script for one arm's memory in a fresh process and read its JSON line."""
    cmd = [sys.executable, __file__, "--child", arm, "--device", args.device, "--batch", str(args.batch)]
    cmd += ["--precision", args.precision]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(
    memory: dict[str, dict], times: dict[str, list[float]], importance: dict, args: argparse.Namespace
) -> str:
    step = {a: statistics.median(times[a]) for a in ARMS}
    peak = {a: memory[a]["peak_bytes"] for a in ARMS}
    mb = 1e6
    memory_kind = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS (VmHWM) increase"
    rows = [
        f"| arm | trainable | step (ms) | / LoRA | / dense-mask | peak memory (MB, {memory_kind}) | / LoRA "
        "| AdamW state (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in ARMS:
        r = memory[a]
        rows.append(
            f"| {a} | {r['trainable']:,} | {1000 * step[a]:.0f} | {step[a] / step['lora_r4']:.2f} | "
            f"{step[a] / step['dense_mask']:.2f} | {peak[a] / mb:.0f} | {peak[a] / peak['lora_r4']:.2f} | "
            f"{r['optimizer_state_bytes'] / mb:.1f} |"
        )
    steps_equiv = importance["seconds"] / step["sparse_rank"]
    s, lora, dense = step["sparse_rank"], step["lora_r4"], step["dense_mask"]
    goals = [
        f"- sparse_rank step / LoRA = {s / lora:.2f} (goal <= 1.2): {'met' if s / lora <= 1.2 else 'NOT met'}",
        f"- sparse_rank step / dense-mask = {s / dense:.2f} (goal <= 0.7): {'met' if s / dense <= 0.7 else 'NOT met'}",
        f"- sparse_rank peak memory / LoRA = {peak['sparse_rank'] / peak['lora_r4']:.2f} (goal <= 1.1): "
        f"{'met' if peak['sparse_rank'] <= 1.1 * peak['lora_r4'] else 'NOT met'}",
        f"- importance pass ({importance['batches']} batches) = {importance['seconds']:.1f} s = "
        f"{steps_equiv:.1f} sparse_rank steps (goal <= {importance['batches']}): "
        f"{'met' if steps_equiv <= importance['batches'] else 'NOT met'}",
    ]
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    head = [
        "# peft=sparse: step time, peak memory, importance pass",
        "",
        f"`python bench/bench_sparse.py --device {args.device} --precision {args.precision} --clock {args.clock} "
        f"--steps {args.steps} "
        f"--importance-batches {args.importance_batches}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {device}, "
        f"torch {torch.__version__}, {platform.machine()}.",
        f"{MODEL} at {IMG} px, batch {args.batch}, {precision_words(args.precision)}, AdamW, random weights. "
        f"Step time: median of "
        f"{args.steps} rounds of one step per arm in turn (one process, after a warm-up step each; "
        f"{'process CPU time, one thread' if args.clock == 'cpu' else 'wall clock'}); "
        "peak memory: each arm in its own process over two steps.",
        "",
    ]
    return "\n".join([*head, *rows, "", *goals, ""])


def precision_words(precision: str) -> str:
    if precision == "32":
        return "fp32"
    return "bf16-mixed (training steps under bf16 autocast, fp32 master weights; importance pass fp32)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"], help="cpu: process CPU time, 1 thread"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--importance-batches", type=int, default=16)
    parser.add_argument(
        "--out", type=Path, default=None, help="default: bench/results/sparse[_bf16-mixed].md"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.clock == "cpu":
        if args.device != "cpu":
            parser.error("--clock cpu measures one CPU thread: give --device cpu")
        torch.set_num_threads(1)
        CLOCK[0] = time.process_time
    suffix = "" if args.precision == "32" else f"_{args.precision}"
    args.out = args.out or ROOT / "bench" / "results" / f"sparse{suffix}.md"
    if args.child:
        print(json.dumps(run_memory(args.child, device, args.batch, args.precision)), flush=True)
        return
    memory = {}
    for arm in ARMS:
        memory[arm] = child(arm, args)
        print(f"{arm}: peak {memory[arm]['peak_bytes'] / 1e6:.0f} MB", flush=True)
    times = run_times(device, args.steps, args.batch, args.precision)
    importance = run_importance(device, args.importance_batches, args.batch)
    print(f"importance: {importance['seconds']:.1f} s", flush=True)
    text = table(memory, times, importance, args)
    write_result(args.out, text)


if __name__ == "__main__":
    main()
