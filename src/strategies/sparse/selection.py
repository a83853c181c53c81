"""Which k entries train, given one importance score matrix per eligible weight.

* ``global``: the k highest scores over all matrices (SPT; SH-PEFT's single threshold).
* ``per_layer``: the same fraction of every matrix (largest-remainder rounding so the total is exactly k).
* ``per_neuron``: the top K = k // R inputs of every output row (R = rows over all matrices; GPS keeps K per
  neuron); the k mod R leftover entries go to the rows whose (K+1)-th score is highest.

Each returns, per matrix, the sorted flat positions (row * in + column) of its selected entries.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from src.errors import UserError

SELECTIONS = ("global", "per_layer", "per_neuron")


def select_global(scores: list[Tensor], k: int) -> list[Tensor]:
    flat = torch.cat([s.flatten() for s in scores])
    top = torch.topk(flat, k, sorted=False).indices.sort().values
    starts = torch.tensor([0, *torch.tensor([s.numel() for s in scores]).cumsum(0).tolist()])
    bounds = torch.searchsorted(top, starts.to(top.device)).tolist()
    return [top[a:b] - starts[i].item() for i, (a, b) in enumerate(pairwise(bounds))]


def split_counts(sizes: list[int], k: int) -> list[int]:
    """k split in proportion to ``sizes``, rounded down, the remainder to the largest fractional parts."""
    total = sum(sizes)
    exact = [k * n / total for n in sizes]
    counts = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: k - sum(counts)]:
        counts[i] += 1
    return counts


def select_per_layer(scores: list[Tensor], k: int) -> list[Tensor]:
    counts = split_counts([s.numel() for s in scores], k)
    return [
        torch.topk(s.flatten(), c, sorted=False).indices.sort().values
        for s, c in zip(scores, counts, strict=True)
    ]


def check_per_neuron(shapes: list[tuple[int, ...]], k: int) -> None:
    """per_neuron needs at least one entry per row and no more per row than the narrowest matrix has."""
    rows = sum(s[0] for s in shapes)
    narrowest = min(s[1] for s in shapes)
    if not rows <= k <= rows * narrowest:
        raise UserError(
            f"peft.selection=per_neuron keeps the same number of inputs in each of the {rows:,} output rows, "
            f"so peft.budget must give between {rows:,} and {rows * narrowest:,} entries (it gives {k:,}); "
            "change the budget or use peft.selection=global."
        )


def select_per_neuron(scores: list[Tensor], k: int) -> list[Tensor]:
    check_per_neuron([tuple(s.shape) for s in scores], k)
    rows = sum(s.shape[0] for s in scores)
    per_row, extra = divmod(k, rows)
    take = per_row + (extra > 0)
    tops = [torch.topk(s, take, dim=1) for s in scores]
    bonus = torch.zeros(rows, dtype=torch.bool)
    if extra:
        runner_up = torch.cat([t.values[:, -1] for t in tops])
        bonus[torch.topk(runner_up, extra).indices.cpu()] = True
    out, row0 = [], 0
    for s, t in zip(scores, tops, strict=True):
        n_rows, width = s.shape
        cols = t.indices[:, :per_row]
        keep_extra = bonus[row0 : row0 + n_rows].to(s.device)
        flat = (torch.arange(n_rows, device=s.device)[:, None] * width + cols).flatten()
        if extra:
            extra_rows = keep_extra.nonzero().flatten()
            flat = torch.cat([flat, extra_rows * width + t.indices[extra_rows, -1]])
        out.append(flat.sort().values)
        row0 += n_rows
    return out


def select(scores: list[Tensor], k: int, mode: str) -> list[Tensor]:
    if mode == "global":
        return select_global(scores, k)
    if mode == "per_layer":
        return select_per_layer(scores, k)
    return select_per_neuron(scores, k)
