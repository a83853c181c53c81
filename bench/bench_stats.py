"""src.stats speed on NIH's test-set size: DeLong for 14 classes and a 2000-resample paired bootstrap.

A 22,433 x 14 multilabel test set (NIH ChestX-ray14's official test split size, its 14 prevalences roughly
as published) with two correlated runs' scores. Timed side by side in one process:

* the paired DeLong test (``src.stats.delong``), all 14 classes;
* the vectorised paired case bootstrap (``src.stats.bootstrap``), ``--n-boot`` resamples, both runs (and
  one run alone: the CI every training run computes);
* the baseline: the same resamples scored one at a time with torchmetrics' ``multilabel_auroc`` (both runs)
  — on the first ``--loop-resamples`` resamples only, extrapolated linearly to ``--n-boot`` (each resample
  costs the same), and checked equal to the vectorised values on those resamples.

Goals: DeLong under 1 s for the 14 classes; the bootstrap at least 20x faster than the loop.

    python bench/bench_stats.py [--n-boot 2000] [--loop-resamples 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import multilabel_auroc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from write_result import write_result  # noqa: E402

from src.stats.bootstrap import bootstrap_auroc, resample_indices  # noqa: E402
from src.stats.delong import delong_test  # noqa: E402

N = 22_433
# NIH ChestX-ray14 prevalences (Wang et al. 2017, whole set), in FINDINGS order.
PREVALENCE = [
    0.103,
    0.025,
    0.119,
    0.177,
    0.052,
    0.056,
    0.013,
    0.047,
    0.042,
    0.021,
    0.022,
    0.015,
    0.030,
    0.002,
]


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((N, len(PREVALENCE))) < np.array(PREVALENCE)).astype(np.float64)
    shared = rng.normal(0, 1, labels.shape)
    a = labels * 1.2 + shared + rng.normal(0, 0.6, labels.shape)
    b = labels * 1.3 + shared + rng.normal(0, 0.6, labels.shape)
    # float32 probabilities, as runs write them: ties occur as in real predictions files.
    return labels, *(1 / (1 + np.exp(-x)).astype(np.float32) for x in (a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--loop-resamples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    labels, a, b = data()
    k = labels.shape[1]

    start = time.perf_counter()
    p = [delong_test(a[:, c], b[:, c], labels[:, c]).p for c in range(k)]
    delong_s = time.perf_counter() - start

    drawn = next(resample_indices(None, N, args.n_boot, 0))[: args.loop_resamples]
    ta, tb, tl = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(labels).long()

    def loop(rows_list: np.ndarray) -> tuple[float, list]:
        start = time.perf_counter()
        out = []
        for rows in rows_list:
            i = torch.from_numpy(rows)
            out.append(
                [multilabel_auroc(s[i], tl[i], num_labels=k, average="none").numpy() for s in (ta, tb)]
            )
        return (time.perf_counter() - start) / len(rows_list), out

    # The loop's resamples are timed half before, half after the vectorised run: the shared machine's load
    # drifts, and this way both see the same.
    half = len(drawn) // 2
    before_s, looped = loop(drawn[:half])

    start = time.perf_counter()
    boot = bootstrap_auroc([a, b], labels, args.n_boot, seed=0)
    vector_s = time.perf_counter() - start

    after_s, rest = loop(drawn[half:])
    looped += rest
    loop_s = (before_s + after_s) / 2 * args.n_boot

    start = time.perf_counter()
    bootstrap_auroc([a], labels, args.n_boot, seed=0)  # the CI every training run computes
    single_s = time.perf_counter() - start
    diff = float(np.abs(np.array(looped).transpose(1, 0, 2) - boot[:, : len(drawn)]).max())
    load_after = os.getloadavg()[0]

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ratio = loop_s / vector_s
    lines = [
        "# src.stats: DeLong and the paired bootstrap on a 22,433 x 14 multilabel test set",
        "",
        f"`python bench/bench_stats.py --n-boot {args.n_boot} --loop-resamples {args.loop_resamples} "
        f"--threads {args.threads}` — {now}, CPU ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"numpy {np.__version__}, {platform.machine()}. Two correlated runs' float32 scores, 14 labels at NIH's "
        f"prevalences (the rarest: {int(labels[:, -1].sum())} positives).",
        "",
        "| what | seconds | note |",
        "|---|---|---|",
        f"| paired DeLong, 14 classes | {delong_s:.3f} | min p {min(p):.2g} |",
        f"| paired bootstrap, vectorised, {args.n_boot} resamples x 2 runs | {vector_s:.2f} | |",
        f"| one run's bootstrap CI (what a training run adds), vectorised | {single_s:.2f} | |",
        f"| per-resample loop, torchmetrics `multilabel_auroc` x 2 runs | {loop_s:.1f} | "
        f"{args.loop_resamples} resamples timed (half before, half after the vectorised run: "
        f"{before_s:.2f} / {after_s:.2f} s each), x {args.n_boot / args.loop_resamples:g} |",
        "",
        f"- DeLong for 14 classes: {delong_s:.3f} s (goal < 1 s): {'met' if delong_s < 1 else 'NOT met'}",
        f"- bootstrap: {ratio:.0f}x faster than the loop (goal >= 20x): {'met' if ratio >= 20 else 'NOT met'}",
        f"- largest |vectorised - loop| AUROC on the timed resamples: {diff:.1e}",
        f"- load average (1 min) {load_before:.1f} before, {load_after:.1f} after: the machine's 2 cores were "
        "shared with other jobs; both timings ran in this one process, back to back.",
        "",
    ]
    write_result(ROOT / "bench" / "results" / "stats.md", "\n".join(lines))


if __name__ == "__main__":
    main()
