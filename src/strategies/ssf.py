"""SSF: Scaling & Shifting your Features (Lian, Zhou, Feng and Wang, NeurIPS 2022, arXiv 2210.08823).

After chosen Linear layers of the frozen backbone, SSF learns a per-channel scale ``γ`` and shift ``β``:

    y = γ ⊙ (W x + b) + β

Here after each block's attention output (``attn.proj``) and MLP output (``mlp.fc2``): ``2 d`` weights per
layer, ``4 d L`` in all (36,864 on ViT-B/16, 0.04 %), plus the new head. Being linear in the layer's output,
SSF folds into that Linear for inference at the plain backbone's cost (the paper's re-parameterisation):

    W' = diag(γ) W,   b' = γ ⊙ b + β

γ starts at N(1, init_std²) and β at N(0, init_std²) as in the authors' code (init_std 0.02). The paper also
inserts SSF after qkv, fc1 and the norms; ``targets`` takes any Linear names (suffixes, as LoRA's
``target_modules``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from src.errors import UserError
from src.strategies.base import Strategy, freeze, unfreeze_head
from src.strategies.lora import check_targets


class SSFLinear(nn.Module):
    """A frozen Linear followed by a trainable per-output-channel scale and shift."""

    def __init__(self, base: nn.Linear, init_std: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.merged = False
        self.ssf_scale = nn.Parameter(torch.empty(base.out_features).normal_(1.0, init_std))
        self.ssf_shift = nn.Parameter(torch.empty(base.out_features).normal_(0.0, init_std))

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        return out if self.merged else out * self.ssf_scale + self.ssf_shift

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight.mul_(self.ssf_scale.unsqueeze(1))
            self.base.bias.mul_(self.ssf_scale).add_(self.ssf_shift)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        # Inexact in floating point; src.merge restores the kept frozen weights after calling this.
        if self.merged:
            self.base.bias.sub_(self.ssf_shift).div_(self.ssf_scale)
            self.base.weight.div_(self.ssf_scale.unsqueeze(1))
            self.merged = False


@dataclass
class SSF(Strategy):
    name: str = "ssf"
    targets: list[str] | str = field(default_factory=lambda: ["attn.proj", "mlp.fc2"])
    init_std: float = 0.02

    def apply(self, model: nn.Module) -> nn.Module:
        names = check_targets(model, self.targets, key="peft.targets")
        no_bias = [n for n in names if model.get_submodule(n).bias is None]
        if no_bias:
            raise UserError(
                f"peft=ssf folds its shift into the bias of each target, but {', '.join(no_bias[:3])} have "
                "none; choose Linear layers with a bias in peft.targets."
            )
        freeze(model)
        for name in names:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, child, SSFLinear(getattr(owner, child), self.init_std))
        unfreeze_head(model)
        return model

    def metadata(self) -> dict[str, str]:
        targets = self.targets if isinstance(self.targets, str) else ",".join(self.targets)
        return {**super().metadata(), "targets": targets}

    def no_weight_decay(self) -> list[str]:
        return ["*.ssf_scale", "*.ssf_shift"]

    def mergeable(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if isinstance(m, SSFLinear)]
