"""LoRA on the query and value parts of a fused ``qkv`` Linear: MeLo's and MED-PEFT's placement.

timm ViTs compute q, k and v with one Linear ``W = [W_q; W_k; W_v]`` (3d x d). With rank r and
scaling s = alpha / r this layer computes

    q = W_q x + b_q + s * B_q A_q dropout(x)
    k = W_k x + b_k                              (untouched)
    v = W_v x + b_v + s * B_v A_v dropout(x)

A_q, A_v (r x d) start Kaiming-uniform (a = sqrt 5), B_q, B_v (d x r) start at zero, so training starts
from the pretrained function. Trainable: 4 r d per block, i.e. 147,456 at r=4 on ViT-B/16 (d = 768), the
same count as LoRA on the whole qkv but spent on q and v only (Hu et al. 2022 found q+v the best pair).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class QVLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        d = base.in_features
        if base.out_features != 3 * d:
            raise ValueError(f"q/v LoRA needs a fused qkv Linear (out = 3 x in), got {base}")
        self.base = base.requires_grad_(False)
        self.dim, self.scaling, self.merged = d, alpha / rank, False
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A_q = nn.Linear(d, rank, bias=False)
        self.lora_B_q = nn.Linear(rank, d, bias=False)
        self.lora_A_v = nn.Linear(d, rank, bias=False)
        self.lora_B_v = nn.Linear(rank, d, bias=False)
        for a, b in ((self.lora_A_q, self.lora_B_q), (self.lora_A_v, self.lora_B_v)):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)

    def delta_weight(self) -> Tensor:
        """The (3d x d) update s * [B_q A_q; 0; B_v A_v] that merging adds to the base weight."""
        dq = self.lora_B_q.weight @ self.lora_A_q.weight
        dv = self.lora_B_v.weight @ self.lora_A_v.weight
        return self.scaling * torch.cat([dq, torch.zeros_like(dq), dv], dim=0)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: inference then costs exactly the plain Linear."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged:
            return out
        h = self.dropout(x)
        dq = self.lora_B_q(self.lora_A_q(h)) * self.scaling
        dv = self.lora_B_v(self.lora_A_v(h)) * self.scaling
        return out + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


def inject_qv_lora(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float) -> nn.Module:
    """Replace each named fused-qkv Linear of ``model`` by a :class:`QVLoRALinear` around it."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QVLoRALinear(getattr(parent, child), rank, alpha, dropout))
    return model
