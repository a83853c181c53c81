"""The GPU path in one short run (< 10 minutes on one GPU): ``bash bench/gpu_check.sh`` on a CUDA machine.

Sections, each recorded as ok / FAILED (with the error) / skipped, none stopping the others:

1. ``fdr``: ``python -m src.train debug=fdr`` of every strategy (every ``conf/peft/*.yaml``) under
   ``bf16-mixed``, through :func:`src.train.train` (pocket backbone, synthetic data, ``logger=none``);
2. ``sparse``: the sparse delta layer (forward, input and value gradients) on the device, i.e. CUDA's
   ``sampled_addmm`` path, against the same layer on the CPU and a dense float64 reference; plus its error
   under bf16 autocast;
3. ``ddp``: a 2-GPU ``trainer=ddp debug=limit`` run when two GPUs exist (skipped otherwise);
4. ``throughput``: training images/s of ViT-B/16 at 224 px, batch 64, ``bf16-mixed``, for linear, LoRA r=4
   (qkv and q/v), sparse (LoRA's count) and full fine-tuning, fed by the ``dataset=image_folder`` loader
   over its preprocessed cache and by in-memory tensors: the ratio says whether the loader or the model
   bounds training;
5. ``checkpoints``: ``last.ckpt`` save time and size on the device, lean vs whole (LoRA r=4, linear).

Writes one Markdown file naming the device: ``$OUT/gpu_check.md`` when ``$OUT`` is set, else
``bench/results/gpu_check.md`` (``--out`` overrides), rewritten after every section so a killed run keeps
what it measured. A global time guard (``--budget``) skips what no longer fits. ``--device cpu --tiny`` runs
every section on the pocket model in seconds (CI: tests/test_gpu_check.py).

    python bench/gpu_check.py [--device cuda|cpu] [--tiny] [--budget 500] [--sections fdr,sparse,ddp,throughput,checkpoints]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # `src` from this checkout, and the sibling benchmarks

SECTIONS = ("fdr", "sparse", "ddp", "throughput", "checkpoints")
# Throughput arms: name -> overrides (rank 4 everywhere; sparse at LoRA's trainable count).
ARMS = {
    "linear": ["peft=linear"],
    "lora_qkv": ["peft=lora"],
    "lora_qv": ["peft=lora", "peft.targets=qv"],
    "sparse": ["peft=sparse"],
    "full": ["peft=full"],
}
TINY_DATA = [
    "dataset.sizes.train=64",
    "dataset.sizes.val=32",
    "dataset.sizes.test=32",
    "dataset.batch_size=16",
]
# --tiny (the CI test): the least data that still has both classes in every split.
CI_DATA = ["dataset.sizes.train=16", "dataset.sizes.val=16", "dataset.sizes.test=16", "dataset.batch_size=8"]


class Report:
    """The results file: a header naming the device, then one block per section, rewritten as it grows."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header, self.blocks = path, header, []
        self.failed: list[str] = []

    def add(self, title: str, status: str, lines: list[str]) -> None:
        self.blocks.append([f"## {title}: {status}", "", *lines, ""])
        if status.startswith("FAILED"):
            self.failed.append(title)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.text())
        print(f"[gpu_check] {title}: {status}", flush=True)

    def text(self) -> str:
        return "\n".join([*self.header, "", *(line for block in self.blocks for line in block)]) + "\n"


class Clock:
    """The global time guard: every section asks how much is left before it starts something."""

    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget

    def left(self) -> float:
        return self.deadline - time.monotonic()


def compose(overrides: list[str], tmp: Path, name: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp / name)
        cfg.paths.log_dir = str(tmp / "outputs")
        cfg.paths.data_dir = str(tmp / "data")
    return cfg


def accelerator(device: str) -> str:
    return "gpu" if device == "cuda" else "cpu"


# --- 1. fast_dev_run of every strategy under bf16-mixed --------------------------------------------------


def strategies() -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / "peft").glob("*.yaml"))


def section_fdr(args: argparse.Namespace, clock: Clock, tmp: Path) -> tuple[str, list[str]]:
    from src.train import train

    names = args.strategies.split(",") if args.strategies else strategies()
    rows, bad = ["| peft | test/auroc | trainable | seconds |", "|---|---|---|---|"], []
    for peft in names:
        if clock.left() < 20:
            rows.append(f"| {peft} | skipped: time guard | | |")
            continue
        start = time.perf_counter()
        try:
            overrides = [f"peft={peft}", "debug=fdr", "logger=none", "trainer.precision=bf16-mixed"]
            overrides += [
                f"trainer.accelerator={accelerator(args.device)}",
                *(CI_DATA if args.tiny else TINY_DATA),
            ]
            m = train(compose(overrides, tmp, f"fdr_{peft}"))
            rows.append(
                f"| {peft} | {m['test/auroc']:.3f} | {m['trainable_params']:,} | {time.perf_counter() - start:.1f} |"
            )
        except Exception as err:
            bad.append(peft)
            rows.append(f"| {peft} | FAILED: {one_line(err)} | | {time.perf_counter() - start:.1f} |")
    return ("FAILED: " + ", ".join(bad) if bad else "ok"), rows


# --- 2. the sparse layer on the device vs the CPU and a dense reference -------------------------------------


def sparse_case(device: str, tiny: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Output, input gradient and value gradient of one sparse delta layer, with the data made on the CPU."""
    from src.strategies.sparse.delta import SparseDelta, SparseLinear

    d_in, d_out, tokens, k = (64, 192, 17, 256) if tiny else (768, 2304, 197, 4096)
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(d_in, d_out)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d_out, d_in, generator=gen) * 0.02)
        base.bias.copy_(torch.randn(d_out, generator=gen) * 0.02)
    delta = SparseDelta([(d_out, d_in)], k)
    delta.set_selection([torch.randperm(d_out * d_in, generator=gen)[:k].sort().values])
    with torch.no_grad():
        delta.values.copy_(torch.randn(k, generator=gen) * 0.01)
    x = torch.randn(4, tokens, d_in, generator=gen)
    g = torch.randn(4, tokens, d_out, generator=gen)
    layer = SparseLinear(base, delta, 0).to(device)
    delta.to(device)
    xd = x.clone().to(device).requires_grad_(True)
    y = layer(xd)
    y.backward(g.to(device))
    out = {"y": y.detach(), "grad_x": xd.grad, "grad_v": delta.values.grad, "index": delta.indices}
    out = {k: v.detach().cpu() for k, v in out.items()}
    out |= {"x": x, "g": g, "w": base.weight.detach().cpu(), "b": base.bias.detach().cpu()}
    out["v"] = delta.values.detach().cpu()
    return out


def dense_reference(case: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same layer written densely in float64: W' = W + S(v), y = x W'^T + b, autograd for x and v."""
    w, g = case["w"].double(), case["g"].double()
    x, v = (case[k].detach().double().requires_grad_(True) for k in ("x", "v"))
    dense = torch.zeros(w.numel(), dtype=torch.float64).index_put((case["index"].long(),), v).view_as(w)
    y = x @ (w + dense).T + case["b"].double()
    y.backward(g)
    return {"y": y.detach(), "grad_x": x.grad, "grad_v": v.grad}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


def section_sparse(args: argparse.Namespace, clock: Clock, tmp: Path) -> tuple[str, list[str]]:
    on_device, on_cpu = sparse_case(args.device, args.tiny), sparse_case("cpu", args.tiny)
    ref = dense_reference(on_cpu)
    with torch.autocast(device_type=args.device, dtype=torch.bfloat16):
        bf16 = sparse_case(args.device, args.tiny)
    rows = [
        f"| quantity | {args.device} vs CPU (fp32) | {args.device} vs dense fp64 | CPU vs dense fp64 | "
        f"{args.device} bf16 autocast vs dense fp64 |",
        "|---|---|---|---|---|",
    ]
    worst = 0.0
    for key in ("y", "grad_x", "grad_v"):
        errs = (
            rel_err(on_device[key], on_cpu[key]),
            rel_err(on_device[key], ref[key]),
            rel_err(on_cpu[key], ref[key]),
            rel_err(bf16[key], ref[key]),
        )
        worst = max(worst, *errs[:3])
        rows.append(f"| {key} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")
    rows += ["", "Errors are max |difference| / max |reference|; fp32 columns must stay below 1e-4."]
    return ("ok" if worst < 1e-4 else f"FAILED: fp32 relative error {worst:.2e} >= 1e-4"), rows


# --- 3. two-GPU DDP --------------------------------------------------------------------------------------


def section_ddp(args: argparse.Namespace, clock: Clock, tmp: Path) -> tuple[str, list[str]]:
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if gpus < 2:
        return "skipped", [f"{gpus} CUDA device(s) here: the 2-GPU DDP run needs two."]
    run_dir = tmp / "ddp"
    cmd = [
        sys.executable, "-m", "src.train", "trainer=ddp", "trainer.devices=2", "debug=limit", "logger=none",
        "peft=lora", *TINY_DATA, f"hydra.run.dir={run_dir}", f"paths.data_dir={tmp / 'data'}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(30, min(240, clock.left() - 10))
    )
    metrics = run_dir / "metrics.json"
    lines = [f"`{' '.join(cmd[2:])}` -> exit {result.returncode}"]
    if result.returncode != 0 or not metrics.is_file():
        tail = (result.stderr or result.stdout)[-1500:]
        return f"FAILED: exit {result.returncode}", [*lines, "", "```", tail, "```"]
    return "ok", [*lines, "", f"metrics.json: `{metrics.read_text()[:400]}`"]


# --- 4. training throughput ------------------------------------------------------------------------------


class StepClock:
    """Times the training steps after ``warmup`` (CUDA synchronised at both ends)."""

    def __init__(self, warmup: int) -> None:
        import lightning as L

        outer = self

        class _Callback(L.Callback):
            def on_train_batch_start(self, trainer, *_) -> None:
                if trainer.global_step == outer.warmup and outer.start is None:
                    outer.sync()
                    outer.start = time.perf_counter()

            def on_train_end(self, trainer, *_) -> None:
                outer.sync()
                outer.seconds = time.perf_counter() - (outer.start or time.perf_counter())
                outer.steps = trainer.global_step - outer.warmup

        self.warmup, self.start, self.seconds, self.steps = warmup, None, 0.0, 0
        self.callback = _Callback()

    @staticmethod
    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()


class Batches(torch.utils.data.Dataset):
    """In-memory training batches (made once, pinned on a GPU machine): the model-bound ceiling."""

    def __init__(self, steps: int, batch: int, size: int) -> None:
        images = torch.randn(4, batch, 3, size, size)
        self.images = images.pin_memory() if torch.cuda.is_available() else images
        self.target, self.steps = torch.arange(batch) % 2, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i % len(self.images)], self.target


def cached_loader(tmp: Path, images: int, size: int, batch: int, workers: int):
    """``dataset=image_folder`` over generated PNGs, with its preprocessed cache built before timing."""
    from bench_data_cache import make_tree

    from src.data.image_folder import ImageFolderDataModule

    root = tmp / "images"
    if not root.is_dir():
        make_tree(root, images, size + size // 8, max(1, workers), "gray")
    dm = ImageFolderDataModule(
        name="gpu_check", root=str(root), image_size=size, mean=[0.5] * 3, std=[0.5] * 3, batch_size=batch,
        num_workers=workers, cache=True, cache_dir=str(tmp / "cache"),
    )  # fmt: skip
    dm.setup("fit")  # decodes every image once into the cache (not timed)
    return dm.train_dataloader(), len(dm.datasets["train"])


def throughput(arm: str, loader, args: argparse.Namespace, tmp: Path, steps: int) -> float:
    import lightning as L
    from omegaconf import OmegaConf

    from src.models.module import ClassificationModule
    from src.tasks import Task
    from src.train import backbone_config, build_model

    backbone = ["backbone=tiny"] if args.tiny else ["backbone=vit_base"]
    cfg = compose([*backbone, "rank=4", *ARMS[arm]], tmp, f"tp_{arm}")
    task = Task("binary", ("a", "b"))  # the generated image folders: classes a and b
    model, _ = build_model(cfg, task)
    module = ClassificationModule(
        model, task, OmegaConf.to_container(cfg.optim, resolve=True), backbone_config(cfg)
    )
    clock = StepClock(args.warmup)
    trainer = L.Trainer(
        accelerator=accelerator(args.device), devices=1, precision="bf16-mixed", max_steps=args.warmup + steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock.callback], default_root_dir=tmp,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return clock.steps * args.batch / clock.seconds if clock.seconds > 0 else float("nan")


def section_throughput(args: argparse.Namespace, clock: Clock, tmp: Path) -> tuple[str, list[str]]:
    size = 64 if args.tiny else 224
    workers = min(8, os.cpu_count() or 1) if args.device == "cuda" else 0
    steps = args.steps
    loader, n = cached_loader(tmp, args.images, size, args.batch, workers)
    memory = torch.utils.data.DataLoader(Batches(args.warmup + steps, args.batch, size), batch_size=None)
    rows = [
        f"bf16-mixed, batch {args.batch}, {size} px, {args.warmup} warm-up + {steps} timed steps per cell; cache "
        f"loader: `dataset=image_folder` ({n} gray PNGs, cache built before timing, {workers} workers, "
        "epochs wrap); memory: the same 4 batches held in (pinned) memory.",
        "",
        "| arm | cache loader img/s | in-memory img/s | cache / memory | bound by |",
        "|---|---|---|---|---|",
    ]
    bad = []
    for arm in args.arms.split(","):
        if clock.left() < 45:
            rows.append(f"| {arm} | skipped: time guard | | | |")
            continue
        try:
            fed = throughput(arm, loader, args, tmp, steps)
            ceiling = throughput(arm, memory, args, tmp, steps)
            ratio = fed / ceiling
            bound = "loader" if ratio < 0.9 else "model"
            rows.append(f"| {arm} | {rate(fed)} | {rate(ceiling)} | {ratio:.2f} | {bound} |")
        except Exception as err:
            bad.append(arm)
            rows.append(f"| {arm} | FAILED: {one_line(err)} | | | |")
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    rows += ["", "bound by: `loader` when the cache loader reaches < 0.9x the in-memory rate, else `model`."]
    return ("FAILED: " + ", ".join(bad) if bad else "ok"), rows


# --- 5. checkpoint saves on the device: lean vs whole ------------------------------------------------------


def section_checkpoints(args: argparse.Namespace, clock: Clock, tmp: Path) -> tuple[str, list[str]]:
    from bench_checkpoints import timed_save, trained_trainer

    rows = [
        "One AdamW step trained on the device (bf16-mixed on a GPU), then `trainer.save_checkpoint` of "
        "`last.ckpt` (atomic, fsync'ed), lean (default) and whole (all weights, as before), alternating, "
        f"median of {args.saves}; as bench/bench_checkpoints.py, which has every strategy on the CPU.",
        "",
        "| peft | lean MB | whole MB | lean save | whole save | whole / lean |",
        "|---|---|---|---|---|---|",
    ]
    for peft in ("lora", "linear"):
        trainer, _ = trained_trainer(peft, tmp, accelerator(args.device), "tiny" if args.tiny else "vit_base")
        path = tmp / "last.ckpt"
        timed_save(trainer, path, lean=True)  # the first save also hashes the frozen weights (once per run)
        lean, whole = [], []
        for i in range(args.saves):
            for kind in ("lean", "whole") if i % 2 == 0 else ("whole", "lean"):
                (lean if kind == "lean" else whole).append(timed_save(trainer, path, kind == "lean"))
        ls, ws = (sorted(s for s, *_ in runs)[len(runs) // 2] for runs in (lean, whole))
        rows.append(
            f"| {peft} | {lean[0][1] / 1e6:.2f} | {whole[0][1] / 1e6:.1f} | {1e3 * ls:.1f} ms | {1e3 * ws:.0f} ms "
            f"| {ws / ls:.0f}x |"
        )
        del trainer
    return "ok", rows


# --- driver ----------------------------------------------------------------------------------------------


def rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")
    return text[:300]


def device_name(device: str) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def default_out() -> Path:
    folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results"
    return folder / "gpu_check.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="pocket model, small sizes: the CPU test")
    parser.add_argument("--budget", type=float, default=500.0, help="seconds for everything (time guard)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--strategies", default="", help="fdr: comma list (default: every conf/peft/*.yaml)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--images", type=int, default=2560, help="PNGs behind the cache loader (>= one epoch)"
    )
    parser.add_argument("--saves", type=int, default=3, help="checkpoints: saves of each kind")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    clock, out = Clock(args.budget), args.out or default_out()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (use --device cpu)")
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    with contextlib.suppress(Exception):
        import lightning

        versions["lightning"] = lightning.__version__
    report = Report(
        out,
        [
            f"# GPU check on {device_name(args.device)} ({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            "`python bench/gpu_check.py "
            + " ".join(argv if argv is not None else sys.argv[1:])
            + "`; "
            + ", ".join(f"{k} {v}" for k, v in versions.items()),
        ],
    )
    runners: dict[str, Callable] = {
        "fdr": section_fdr, "sparse": section_sparse, "ddp": section_ddp, "throughput": section_throughput,
        "checkpoints": section_checkpoints,
    }  # fmt: skip
    titles = {
        "fdr": "fast_dev_run of every strategy, bf16-mixed",
        "sparse": "sparse delta layer on the device vs CPU and a dense fp64 reference",
        "ddp": "2-GPU DDP",
        "throughput": "training throughput, cache loader vs in-memory tensors",
        "checkpoints": "checkpoint saves on the device, lean vs whole",
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name in args.sections.split(","):
            if clock.left() < 10:
                report.add(titles[name], "skipped", [f"time guard: {args.budget:.0f} s budget spent"])
                continue
            start = time.perf_counter()
            try:
                status, lines = runners[name](args, clock, Path(tmp))
            except Exception as err:
                status = f"FAILED: {one_line(err)}"
                lines = ["```", traceback.format_exc()[-3000:], "```"]
            report.add(titles[name], status, [*lines, "", f"({time.perf_counter() - start:.0f} s)"])
    print(report.text(), flush=True)
    print(f"[gpu_check] wrote {out}", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
