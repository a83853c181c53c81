"""A dataset over images already held in memory as one uint8 tensor."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """``images`` (N, H, W[, 3]) uint8 and ``targets`` (N,) or (N, C); random h-flip when ``hflip``."""

    def __init__(
        self, images: Tensor, targets: Tensor, transform: Callable[[Tensor], Tensor], hflip: bool
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets, self.transform, self.hflip = images, targets, transform, hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.transform(self.images[index])
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.targets[index]
