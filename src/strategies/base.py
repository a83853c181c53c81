"""The strategy interface and the freezing helpers the strategies share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn


@dataclass
class Strategy(ABC):
    """Makes a freshly built classifier trainable in one particular way.

    ``apply`` may wrap or inject modules but must leave ``model(x)`` returning logits. Whatever it leaves
    with ``requires_grad=True`` is what the optimizer sees and what ``adapter.safetensors`` stores.
    """

    name: str = "strategy"

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze / adapt ``model`` in place and return the module to train."""

    def prepare(  # noqa: B027 (an optional hook: most strategies need nothing before training)
        self,
        model: nn.Module,
        batches: Iterable,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        device: str = "cpu",
    ) -> None:
        """Before training, with the new head attached: look at training batches (``(images, target)``)
        and the task loss, e.g. to choose which weights train. Runs on ``device``, leaves the model where
        it was."""

    def metadata(self) -> dict[str, str]:
        """What an adapter file must record to be re-applied later (``rank`` only where it matters)."""
        return {"strategy": self.name}

    def report(self, model: nn.Module, out: Path) -> tuple[dict[str, Any], list[Path]]:
        """After training: entries for metrics.json and files written under ``out`` to log as artifacts."""
        return {}, []


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze_head(model: nn.Module) -> None:
    """The new classification head always trains: it starts from random weights."""
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
