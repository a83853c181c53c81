"""Does MeLo's resize (torchvision on float tensors, no antialiasing, torch 1.13) differ from PIL on 8-bit?

MeLo's 224 px loaders (LoRA-ViT utils/dataloader_cxr_cn.py, dataloader_blood_cell.py) resize ``float32 / 255``
tensors with torchvision ``Resize``; torchvision 0.14 did not antialias tensors. Our default decodes with PIL
bilinear on uint8 (antialiased). On a synthetic radiograph-like image at full size this prints the
differences in normalised units (ImageNet std 0.229), which decide ``dataset.resize=tensor`` for MeLo:
``python bench/bench_melo_resize.py``  (result: bench/results/melo_resize.md, quoted in docs/reproduction.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

sys.path.insert(0, str(Path(__file__).parent))
from write_result import write_result

STD = 0.229


def radiograph(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth body and lung fields, rib stripes, noise and a thin wire, 8-bit."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    body = np.exp(-(((x - 0.5) / 0.35) ** 2 + ((y - 0.55) / 0.45) ** 2) * 2)
    lungs = sum(np.exp(-(((x - c) / 0.12) ** 2 + ((y - 0.5) / 0.25) ** 2) * 2) for c in (0.33, 0.67))
    img = 0.75 * body - 0.45 * lungs + 0.08 * (np.sin(y * 2 * np.pi * 14) > 0.6) + rng.normal(0, 0.04, (h, w))
    img[int(h * 0.1) : int(h * 0.12), int(w * 0.2) : int(w * 0.8)] += 0.4
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)


def stats(a: torch.Tensor, b: torch.Tensor) -> str:
    diff = (a - b).abs() / STD
    return f"{diff.mean():.4f} / {diff.max():.3f}"


def main() -> None:
    rows = []
    for (h, w), size in [((3000, 2900), 224), ((2000, 2000), 224), ((240, 320), 224), ((1024, 1024), 384)]:
        u8 = radiograph(h, w)
        pil = torch.from_numpy(np.array(Image.fromarray(u8).resize((size, size), Image.Resampling.BILINEAR)))
        pil = pil.float() / 255
        f = torch.from_numpy(u8).float().div(255)[None]
        melo = TF.resize(f, [size, size], antialias=False)[0]
        smooth = TF.resize(f, [size, size], antialias=True)[0]
        rounded = melo.mul(255).round().div(255)
        rows.append(
            f"| {h} x {w} -> {size} | {stats(pil, melo)} | {stats(pil, smooth)} | {stats(rounded, melo)} |"
        )
    text = "\n".join(
        [
            "# MeLo's tensor resize vs PIL on 8-bit (mean / max absolute difference, normalised units)",
            "",
            "| source -> size | PIL uint8 vs torchvision float, antialias off (MeLo) "
            "| vs antialias on | MeLo's, rounded to 8 bits vs float |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
    write_result(Path(__file__).parent / "results" / "melo_resize.md", text)


if __name__ == "__main__":
    main()
