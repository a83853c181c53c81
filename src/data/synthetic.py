"""The embedded dataset: procedurally generated radiograph-like images, nothing read from disk.

* ``binary``: label 1 when the image holds ``findings[0]`` (default: small focal opacities), half the images;
* ``multiclass``: ``normal`` or exactly one of ``findings``, in equal shares;
* ``multilabel``: each of ``findings`` present independently with probability ``prevalence``.

The pixels depend only on ``seed`` (not the training seed), so several training seeds see the same data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from zlib import crc32

import torch
from torch import Tensor

from src.data.arrays import ArrayDataset
from src.data.base import SPLITS, ClassificationDataModule
from src.data.radiographs import FINDINGS, render_split
from src.errors import UserError


def sample_findings(
    task: str, n: int, k: int, prevalence: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(present (n, k) bool, target) for a task over k findings."""
    if task == "binary":
        target = (torch.rand(n, generator=gen) < 0.5).long()
        return target.view(n, 1).bool(), target
    if task == "multiclass":
        target = torch.randint(0, k + 1, (n,), generator=gen)
        present = torch.zeros(n, k, dtype=torch.bool)
        rows = target > 0
        present[rows, target[rows] - 1] = True
        return present, target
    present = torch.rand(n, k, generator=gen) < prevalence
    return present, present.float()


class SyntheticDataModule(ClassificationDataModule):
    def __init__(
        self,
        findings: Sequence[str] = ("opacity",),
        sizes: Mapping[str, int] | None = None,
        prevalence: float = 0.3,
        seed: int = 1234,
        task: str = "binary",
        **kwargs,
    ) -> None:
        findings = tuple(findings)
        unknown = sorted(set(findings) - set(FINDINGS))
        if unknown or not findings:
            raise UserError(f"dataset.findings={list(findings)}: choose from {', '.join(FINDINGS)}.")
        if task == "binary" and len(findings) != 1:
            raise UserError(f"dataset.task=binary takes one finding, got dataset.findings={list(findings)}.")
        class_names = {
            "binary": ("normal", findings[0]),
            "multiclass": ("normal", *findings),
            "multilabel": findings,
        }.get(task, findings)
        super().__init__(task=task, class_names=class_names, **kwargs)
        self.findings, self.prevalence, self.seed = findings, prevalence, seed
        self.sizes = {split: int((sizes or {}).get(split, 0)) for split in SPLITS}

    def build_split(self, split: str) -> ArrayDataset:
        # An independent stream per split keeps val/test fixed when the train size changes.
        seed = crc32(f"{self.seed}/{split}/{self.task_type}/{','.join(self.findings)}".encode())
        gen = torch.Generator().manual_seed(seed)
        present, target = sample_findings(
            self.task_type, self.sizes[split], len(self.findings), self.prevalence, gen
        )
        images = render_split(present, self.findings, self.image_size, seed=seed + 1)
        return ArrayDataset(images, target, self.normalize, hflip=self.hflip and split == "train")
