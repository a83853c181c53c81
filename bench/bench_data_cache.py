"""Training-loader throughput: decoding every epoch vs the preprocessed cache (src/data/cache.py).

200 generated 2048 x 2048 8-bit grayscale PNGs (smooth anatomy-like fields plus noise, so they compress
like radiographs; written to a temp dir, not the repository), read through the real `dataset=image_folder`
module at 224 px (training images loaded at 252 px and randomly cropped), the same worker count and batch
size for both. Side by side in one run, alternating, ``--rounds`` times:

- naive: ``dataset.cache=false``, three epochs over one loader (persistent workers, as in training);
- cached: the cache deleted, then the first epoch = building the cache + one epoch over it, then two more.

Goals: cached epochs >= 20x the naive images/s; the first, cache-building epoch <= 1.2x a naive epoch.
``--color rgb`` generates colour PNGs (one field per channel) and reads them with ``dataset.color=rgb``
(results in ``data_cache_rgb.md``).

    python bench/bench_data_cache.py [--images 200] [--size 2048] [--workers 2] [--rounds 2] [--color gray]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from write_result import write_result

from src.config import PROJECT_ROOT
from src.data.image_folder import ImageFolderDataModule


def radiograph(args: tuple[Path, int, int, str]) -> None:
    """A smooth random field (bilinear upsampling of 16 x 16 noise) plus pixel noise, saved as PNG; one
    field per channel for ``rgb``."""
    path, size, seed, color = args
    rng = np.random.default_rng(seed)
    channels = []
    for _ in range(3 if color == "rgb" else 1):
        coarse = Image.fromarray(rng.integers(30, 220, (16, 16), dtype=np.uint8))
        field = np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR), dtype=np.int16)
        channels.append(np.clip(field + rng.normal(0, 4, (size, size)), 0, 255).astype(np.uint8))
    Image.fromarray(np.stack(channels, -1) if color == "rgb" else channels[0]).save(path)


def make_tree(root: Path, images: int, size: int, workers: int, color: str) -> None:
    """<root>/train/{a,b}/ with ``images`` files; tiny val/test folders so no split is carved from train."""
    jobs = []
    for split, n in (("train", images), ("val", 2), ("test", 2)):
        for i in range(n):
            folder = root / split / "ab"[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{i:04d}.png", size if split == "train" else 64, i, color))
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(radiograph, jobs)


def datamodule(
    root: Path, cache_dir: Path, cache: bool, workers: int, batch: int, color: str
) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        name="bench",
        root=str(root),
        image_size=224,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        batch_size=batch,
        num_workers=workers,
        cache=cache,
        cache_dir=str(cache_dir),
        color=color,
    )


def epochs(dm: ImageFolderDataModule, n: int) -> list[float]:
    """Seconds per epoch over one training loader (its workers start in the first)."""
    loader = dm.train_dataloader()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        count = sum(len(x) for x, _ in loader)
        times.append(time.perf_counter() - start)
        assert count == len(dm.datasets["train"])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--color", choices=("gray", "rgb"), default="gray")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    name = "data_cache.md" if args.color == "gray" else "data_cache_rgb.md"
    args.out = args.out or PROJECT_ROOT / "bench" / "results" / name
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root, cache_dir = Path(tmp) / "images", Path(tmp) / "cache"
        start = time.perf_counter()
        make_tree(root, args.images, args.size, args.workers, args.color)
        made = time.perf_counter() - start
        mb = sum(p.stat().st_size for p in (root / "train").rglob("*.png")) / 1e6
        print(f"generated {args.images} PNGs ({mb:.0f} MB) in {made:.0f} s", flush=True)

        naive, first, build, cached = [], [], [], []
        for r in range(args.rounds):
            dm = datamodule(root, cache_dir, False, args.workers, args.batch, args.color)
            dm.datasets["train"] = dm.build_split("train")
            naive += epochs(dm, 3)
            shutil.rmtree(cache_dir, ignore_errors=True)
            dm = datamodule(root, cache_dir, True, args.workers, args.batch, args.color)
            start = time.perf_counter()
            dm.datasets["train"] = dm.build_split("train")
            build.append(time.perf_counter() - start)
            times = epochs(dm, 3)
            first.append(build[-1] + times[0])
            cached += times[1:]
            print(f"round {r}: naive {naive[-3:]}, build {build[-1]:.2f}, cached {times}", flush=True)
        entry_mb = sum(p.stat().st_size for p in cache_dir.rglob("images.npy")) / 1e6

    n = args.images
    naive_steady = statistics.median(naive)
    naive_first = statistics.median(naive[0::3])
    cached_steady = statistics.median(cached)
    first_epoch = statistics.median(first)
    speedup = naive_steady / cached_steady
    first_ratio = first_epoch / naive_first
    rows = [
        ("naive epoch (decode every image), first over a loader", naive_first),
        ("naive epoch, later", naive_steady),
        ("build the cache (decode + resize + write)", statistics.median(build)),
        ("first epoch with the cache (build + epoch)", first_epoch),
        ("cached epoch, later", cached_steady),
    ]
    date = dt.date.today().isoformat()
    lines = [
        f"# Data cache vs decoding every epoch ({date}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__})",
        "",
        f"`python bench/bench_data_cache.py --images {n} --size {args.size} --workers {args.workers} "
        f"--rounds {args.rounds} --color {args.color}`: {n} generated {args.size}x{args.size} "
        f"{'8-bit RGB' if args.color == 'rgb' else '8-bit grayscale'} PNGs ({mb:.0f} MB) read as {args.color}, "
        f"`dataset=image_folder` training loader at 224 px (loaded at 252, random crop + flip), batch "
        f"{args.batch}, {args.workers} workers for decoding and loading alike; medians over {args.rounds} "
        "alternating rounds. The machine's cores were shared with other jobs while it ran, so absolute "
        "times are noisy; both arms saw the same load.",
        "",
        "| epoch over the training split | seconds | images/s |",
        "|---|---|---|",
        *(f"| {name} | {t:.2f} | {n / t:,.0f} |" for name, t in rows),
        "",
        f"**Cached epochs are {speedup:.0f}x faster than decoding every epoch** (goal >= 20x).",
        f"**The first, cache-building epoch takes {first_ratio:.2f}x a naive first epoch** (goal <= 1.2x).",
        f"Cache entry: {entry_mb:.1f} MB for {n} images at 252 px ({mb:.0f} MB of PNGs).",
        "",
    ]
    text = "\n".join(lines)
    write_result(args.out, text)


if __name__ == "__main__":
    main()
