"""Linear probe: a frozen backbone and a trained head only."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from src.strategies.base import Strategy, freeze, unfreeze_head


@dataclass
class LinearProbe(Strategy):
    name: str = "linear"

    def apply(self, model: nn.Module) -> nn.Module:
        freeze(model)
        unfreeze_head(model)
        return model
