"""A dataset that decodes image files on access (PIL), for sources small enough not to need a cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from src.errors import UserError


def read_grayscale(path: Path, size: int) -> Tensor:
    """Decode, convert to 8-bit grayscale (16-bit scaled by its range) and resize to size x size."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                im = Image.fromarray(arr.astype(np.uint8))
            im = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.array(im, dtype=np.uint8))
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path}: {err}. Replace or remove the file.") from None


class ImageFileDataset(Dataset):
    def __init__(
        self,
        paths: Sequence[Path],
        targets: Tensor,
        size: int,
        transform: Callable[[Tensor], Tensor],
        hflip: bool,
    ) -> None:
        self.paths, self.targets, self.size, self.transform, self.hflip = (
            list(paths),
            targets,
            size,
            transform,
            hflip,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.transform(read_grayscale(self.paths[index], self.size))
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.targets[index]
