"""Where the budget went: selected entries per block and matrix (a fused qkv counted per q / k / v third)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from src.strategies.sparse.delta import SparseLinear

BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.(.+)$")


def matrix_counts(layers: dict[str, SparseLinear]) -> dict[tuple[str, str], int]:
    """(block, matrix) -> selected entries; block is the index ("0", "1", ...) or the name outside blocks."""
    counts: dict[tuple[str, str], int] = {}
    for name, layer in layers.items():
        m = BLOCK.search(name)
        block, matrix = (m.group(1), m.group(2).rsplit(".", 1)[-1]) if m else ("-", name)
        _, index = layer.delta.segment(layer.slot)
        out, width = layer.base.out_features, layer.base.in_features
        if matrix == "qkv" and out == 3 * width:
            thirds = torch.bincount((index // width) // width, minlength=3).tolist()
            counts.update({(block, part): n for part, n in zip("qkv", thirds, strict=True)})
        else:
            counts[(block, matrix)] = counts.get((block, matrix), 0) + index.numel()
    return counts


def metrics_entries(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    return {f"sparse/selected/{b if b == '-' else 'block' + b}/{m}": n for (b, m), n in counts.items()}


def heatmap(counts: dict[tuple[str, str], int], path: Path, title: str) -> Path:
    """Blocks down, matrices across, each cell annotated with its count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = sorted({b for b, _ in counts}, key=lambda b: (not b.isdigit(), int(b) if b.isdigit() else 0, b))
    order = ["q", "k", "v", "proj", "fc1", "fc2"]
    matrices = [m for m in order if any(m == mm for _, mm in counts)]
    matrices += sorted({m for _, m in counts} - set(matrices))
    grid = torch.tensor([[counts.get((b, m), 0) for m in matrices] for b in blocks], dtype=torch.float)
    fig, ax = plt.subplots(figsize=(1.1 * len(matrices) + 2, 0.42 * len(blocks) + 1.6))
    image = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(matrices)), matrices)
    ax.set_yticks(range(len(blocks)), [f"block {b}" if b.isdigit() else b for b in blocks])
    high = grid.max().item()
    for (i, j), n in zip(
        torch.cartesian_prod(torch.arange(len(blocks)), torch.arange(len(matrices))).tolist(),
        grid.flatten().tolist(),
        strict=True,
    ):
        ax.text(
            j,
            i,
            f"{int(n):,}",
            ha="center",
            va="center",
            fontsize=7,
            color="black" if n > 0.6 * high else "white",
        )
    fig.colorbar(image, ax=ax, label="selected weights")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
