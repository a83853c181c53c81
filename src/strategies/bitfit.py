"""BitFit (Ben Zaken et al., 2022, arXiv 2106.10199): train only the bias terms, plus the new head.

On ViT-B/16 that is ~0.1 M of 86 M weights (~0.12 %), close to LoRA r=4's budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from src.strategies.base import Strategy, freeze, unfreeze_head


@dataclass
class BitFit(Strategy):
    name: str = "bitfit"

    def apply(self, model: nn.Module) -> nn.Module:
        freeze(model)
        for name, p in model.named_parameters():
            if name == "bias" or name.endswith(".bias"):
                p.requires_grad_(True)
        unfreeze_head(model)
        return model
