"""q/v LoRA unmerged vs the plain backbone vs merged: inference and a training step (issue #17).

ViT-B/16 at 224 px, batch 32, random weights (nothing downloaded), q/v LoRA r=4 with non-zero B (as after
training). Arms, all built from the same seed (the same backbone weights):

* ``plain``     the timm backbone as is;
* ``merged``    q/v LoRA folded into the weights (``strategy.merge``): a plain model again;
* ``unmerged``  q/v LoRA as trained: ``QVLoRALinear`` adding into the q / v slices in place (this repo);
* ``before``    the previous forward, ``out + cat([dq, zeros, dv])`` (a 3d-wide block per layer);
* ``melo``      MeLo's formula through autograd: ``qkv[..., :d] += s*B_q(A_q(x))``, likewise v.

Inference: ``model.eval()`` under ``torch.inference_mode()``. Training step: forward, cross-entropy,
backward, AdamW step on what trains. ``plain``'s training step is the floor a LoRA step cannot beat: the
frozen backbone and trainable head, with the tokens entering the first block requiring grad so that the
backward runs through every block as LoRA's does (a little more: block 1's input gradient, which LoRA does
not need); merged weights do not train, so there is no ``merged`` training arm.

All arms live in one process; each round runs every arm once, in an order rotated by one per round, after
one warm-up call each, so load from other jobs hits all arms alike; the table gives medians over the rounds
and the ratio to ``plain``. Goal: unmerged inference <= 1.03x plain at batch 32.

Defaults fit a 2-core CPU: 3 inference rounds at batch 32, 2 training rounds at batch 8 (the relative cost
of the rank-r products does not depend on the batch) for plain, unmerged and before. On a CPU shared with
other jobs add ``--threads 1 --clock cpu`` (this process's CPU time: wall-clock times there swing by tens of
per cent); on a GPU give more rounds, ``--train-batch 32`` and ``--train-arms plain unmerged before melo``.

    python bench/bench_lora_unmerged.py [--device cpu|cuda] [--precision 32|bf16-mixed] [--threads 1 --clock cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from write_result import write_result  # noqa: E402

from src.strategies.lora import LoRA  # noqa: E402
from src.strategies.lora_qv import QVLoRALinear  # noqa: E402

MODEL, IMG, CLASSES, RANK = "vit_base_patch16_224", 224, 2, 4
INFERENCE_ARMS = ("plain", "merged", "unmerged", "before", "melo")
TRAINING_ARMS = ("plain", "unmerged", "before", "melo")


class BeforeQV(QVLoRALinear):
    """The forward this repo had before issue #17: a full 3d-wide update with a zero block for k."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        h = self.dropout(x)
        dq = self.lora_B_q(self.lora_A_q(h)) * self.scaling
        dv = self.lora_B_v(self.lora_A_v(h)) * self.scaling
        return out + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


class MeloQV(QVLoRALinear):
    """MeLo's _LoRA_qkv_timm forward: in-place slice adds, autograd does the rest."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        h = self.dropout(x)
        out[..., : self.dim] += self.scaling * self.lora_B_q(self.lora_A_q(h))
        out[..., 2 * self.dim :] += self.scaling * self.lora_B_v(self.lora_A_v(h))
        return out


def tokens_need_grad(module: nn.Module, inputs: tuple, out: Tensor) -> Tensor:
    return out.requires_grad_(True) if torch.is_grad_enabled() else out


def build(arm: str, device: torch.device, name: str = MODEL) -> nn.Module:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=CLASSES, img_size=IMG)
    if arm == "plain":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
        model.norm_pre.register_forward_hook(tokens_need_grad)  # timm ViT: the tokens before block 1
        return model.to(device)
    strategy = LoRA(rank=RANK, targets="qv")
    model = strategy.apply(model)
    for layer in model.modules():
        if isinstance(layer, QVLoRALinear):
            for b in (layer.lora_B_q, layer.lora_B_v):
                nn.init.normal_(b.weight, std=0.01)  # trained-like, non-zero: the update costs its full price
            layer.__class__ = {"before": BeforeQV, "melo": MeloQV}.get(arm, QVLoRALinear)
    if arm == "merged":
        strategy.merge(model)
    return model.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timed:
    """Times one call of an arm (synchronising CUDA around it) under the arm's precision."""

    def __init__(self, device: torch.device, precision: str, clock: str = "wall") -> None:
        self.device, self.precision = device, precision
        # CPU time of this process: what other jobs' time slices on a shared machine do not inflate.
        self.clock = time.process_time if clock == "cpu" else time.perf_counter

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def timed(self, fn: Callable[[], None]) -> float:
        sync(self.device)
        start = self.clock()
        fn()
        sync(self.device)
        return self.clock() - start


class Arm(Timed):
    """One arm's model and optimizer; ``infer()`` / ``train_step()`` run and time one call."""

    def __init__(self, arm: str, args: argparse.Namespace, images: Tensor, target: Tensor) -> None:
        super().__init__(torch.device(args.device), args.precision, args.clock)
        self.images, self.target = images, target
        self.model = build(arm, self.device, args.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)

    def infer(self) -> float:
        def run() -> None:
            self.model.eval()
            with torch.inference_mode(), self.autocast():
                self.model(self.images)

        return self.timed(run)

    def train_step(self) -> float:
        def run() -> None:
            self.model.train()
            with self.autocast():
                loss = F.cross_entropy(self.model(self.images), self.target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

        return self.timed(run)


class LayerArm(Timed):
    """One ViT-B qkv layer alone (768 -> 2304) at ``tokens`` rows: plain Linear or a q/v LoRA forward."""

    def __init__(self, arm: str, args: argparse.Namespace, tokens: int) -> None:
        super().__init__(torch.device(args.device), args.precision, args.clock)
        torch.manual_seed(0)
        base = nn.Linear(768, 3 * 768).requires_grad_(False)
        if arm == "plain":
            self.model: nn.Module = base.to(self.device)
        else:
            layer = {"before": BeforeQV, "melo": MeloQV}.get(arm, QVLoRALinear)(base, RANK, float(RANK))
            for b in (layer.lora_B_q, layer.lora_B_v):
                nn.init.normal_(b.weight, std=0.01)
            self.model = layer.to(self.device)
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(tokens, 768, generator=g).to(self.device)
        self.grad = torch.randn(tokens, 3 * 768, generator=g).to(self.device)

    def infer(self) -> float:
        def run() -> None:
            with torch.inference_mode(), self.autocast():
                self.model(self.x)

        return self.timed(run)

    def train_step(self) -> float:
        """Forward and backward of a middle block's qkv: the input needs its gradient, B and A theirs."""

        def run() -> None:
            x = self.x.detach().requires_grad_(True)
            with self.autocast():
                y = self.model(x)
            y.backward(self.grad.to(y.dtype))
            for p in self.model.parameters():
                p.grad = None

        return self.timed(run)


def interleaved(
    arms: dict[str, Arm], names: tuple[str, ...], call: str, rounds: int
) -> dict[str, list[float]]:
    for name in names:
        getattr(arms[name], call)()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(getattr(arms[name], call)())
        print(f"{call} round {i + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names), flush=True)
    return times


def rows(times: dict[str, list[float]]) -> list[str]:
    plain = statistics.median(times["plain"])
    out = ["| arm | median (ms) | / plain | min (ms) | max (ms) |", "|---|---|---|---|---|"]
    for name, t in times.items():
        med = statistics.median(t)
        out.append(
            f"| {name} | {1000 * med:.1f} | {med / plain:.3f} | {1000 * min(t):.1f} | {1000 * max(t):.1f} |"
        )
    return out


def model_part(args: argparse.Namespace, all_images: Tensor, all_target: Tensor) -> list[str]:
    """The whole model: inference at --batch, a training step at --train-batch."""
    images, target = all_images[: args.batch], all_target[: args.batch]
    names = tuple(dict.fromkeys(["plain", "unmerged", *args.arms, *args.train_arms]))
    arms = {name: Arm(name, args, images, target) for name in names}
    with torch.inference_mode():  # the arms compute the same function (merged up to rounding); two images
        ref = arms["unmerged"].model.eval()(images[:2])
        others = [n for n in names if n not in ("plain", "unmerged")]
        gaps = {n: (arms[n].model.eval()(images[:2]) - ref).abs().max().item() for n in others}
    infer = interleaved(arms, tuple(dict.fromkeys(["plain", "unmerged", *args.arms])), "infer", args.rounds)
    for arm in arms.values():
        arm.images, arm.target = all_images[: args.train_batch], all_target[: args.train_batch]
    train_arms = tuple(dict.fromkeys(["plain", "unmerged", *args.train_arms]))
    train = interleaved(arms, train_arms, "train_step", args.train_rounds)
    ratio = statistics.median(infer["unmerged"]) / statistics.median(infer["plain"])
    return [
        f"## {args.model} at {IMG} px",
        "",
        f"Max |logit - unmerged logit|: {', '.join(f'{n} {v:.1e}' for n, v in gaps.items())}.",
        "",
        f"Inference (eval, inference_mode), batch {args.batch}, {args.rounds} rounds:",
        "",
        *rows(infer),
        "",
        f"Training step (forward, backward, AdamW; plain = frozen backbone, input grads through every block), "
        f"batch {args.train_batch}, {args.train_rounds} rounds:",
        "",
        *rows(train),
        "",
        f"- unmerged inference / plain = {ratio:.3f} (goal <= 1.03): {'met' if ratio <= 1.03 else 'NOT met'}",
        "",
    ]


def layer_part(args: argparse.Namespace) -> list[str]:
    """One qkv layer at batch 32 x 197 tokens: the cost the q/v update adds, without the rest of the model."""
    tokens = 32 * 197
    names = ("plain", "unmerged", "before", "melo")
    arms = {name: LayerArm(name, args, tokens) for name in names}
    infer = interleaved(arms, names, "infer", args.layer_rounds)
    train = interleaved(arms, names, "train_step", args.layer_rounds)
    return [
        f"## One ViT-B qkv layer (768 -> 2304) at 32 x 197 = {tokens:,} tokens, {args.layer_rounds} rounds",
        "",
        "Inference (inference_mode):",
        "",
        *rows(infer),
        "",
        "Forward + backward (input gradient, A and B gradients; no optimizer):",
        "",
        *rows(train),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default=MODEL, help=argparse.SUPPRESS)  # a small one for a smoke run
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-rounds", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--arms", nargs="+", default=list(INFERENCE_ARMS), choices=INFERENCE_ARMS)
    parser.add_argument(
        "--train-arms", nargs="+", default=["plain", "unmerged", "before"], choices=TRAINING_ARMS
    )
    parser.add_argument("--part", default="both", choices=["model", "layer", "both"])
    parser.add_argument("--layer-rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: this process's CPU time (with --threads 1 on a shared CPU: immune to other jobs' time slices)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lora_unmerged.md")
    args = parser.parse_args()
    if args.clock == "cpu" and (args.device != "cpu" or args.threads != 1):
        parser.error("--clock cpu measures one CPU thread: give --device cpu --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(1)
    all_images = torch.randn(max(args.batch, args.train_batch), 3, IMG, IMG, generator=g).to(device)
    all_target = torch.randint(0, CLASSES, (len(all_images),), generator=g).to(device)
    where = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    shown = [a for i, a in enumerate(sys.argv[1:]) if a != "--out" and sys.argv[i] != "--out"]
    command = " ".join(["python bench/bench_lora_unmerged.py", *shown])
    lines = [
        "# q/v LoRA r=4 unmerged vs plain vs merged",
        "",
        f"`{command}` — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {where}, torch {torch.__version__}, "
        f"{platform.machine()}; precision {args.precision}, random weights, one warm-up call per arm, "
        f"medians of interleaved rounds; clock: {'process CPU time' if args.clock == 'cpu' else 'wall'}.",
        "",
    ]
    if args.part in ("model", "both"):
        lines += model_part(args, all_images, all_target)
    if args.part in ("layer", "both"):
        lines += layer_part(args)
    text = "\n".join(lines)
    write_result(args.out, text)


if __name__ == "__main__":
    main()
