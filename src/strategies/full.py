"""Full fine-tuning: every weight trains (the baseline all three papers compare against)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from src.strategies.base import Strategy


@dataclass
class FullFineTuning(Strategy):
    name: str = "full"

    def apply(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
