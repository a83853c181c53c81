"""LoRA on the query and value parts of a fused ``qkv`` Linear: MeLo's and MED-PEFT's placement.

timm ViTs compute q, k and v with one Linear ``W = [W_q; W_k; W_v]`` (3d x d). With rank r and
scaling s = alpha / r this layer computes

    q = W_q x + b_q + s * B_q A_q dropout(x)
    k = W_k x + b_k                              (untouched)
    v = W_v x + b_v + s * B_v A_v dropout(x)

A_q, A_v (r x d) start Kaiming-uniform (a = sqrt 5), B_q, B_v (d x r) start at zero, so training starts
from the pretrained function. Trainable: 4 r d per block, i.e. 147,456 at r=4 on ViT-B/16 (d = 768), the
same count as LoRA on the whole qkv but spent on q and v only (Hu et al. 2022 found q+v the best pair).

Unmerged, the updates are added into the q and v slices of the base output in place (as MeLo does), with
one product x [A_q; A_v]^T for both A's, and no (N x 3d) block of zeros for k. :class:`AddQV` owns the
backward so that autograd neither clones the (N x 3d) output gradient per slice (what in-place slice adds
cost it) nor runs torch's default layouts, which are 5-10x slower on CPU for these rank-r products.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AddQV(torch.autograd.Function):
    """out[..., :d] += s h_q B_q^T and out[..., 2d:] += s h_v B_v^T in place; h = [h_q, h_v] (..., 2r).

    Gradients: out passes G through unchanged; dL/dh_q = s G_q B_q and dL/dB_q = s G_q^T h_q (likewise v),
    with G_q = G[..., :d], G_v = G[..., 2d:]. Each product is formed as its transpose where that is the fast
    layout (an (r x N) @ (N x d) product rather than a (d x N) @ (N x r) one: about 10x faster on CPU at
    N = 6304). Computed in out's dtype (bf16 under autocast, as LoRA's own products); the gradients return
    in their inputs' dtypes.
    """

    @staticmethod
    def forward(ctx: Any, out: Tensor, h: Tensor, b_q: Tensor, b_v: Tensor, scaling: float) -> Tensor:
        d, r = b_q.shape
        with torch.autocast(out.device.type, enabled=False):
            flat, h_c = out.view(-1, out.shape[-1]), h.reshape(-1, 2 * r).to(out.dtype)
            flat[:, :d].addmm_(h_c[:, :r], b_q.t().to(out.dtype), alpha=scaling)
            flat[:, 2 * d :].addmm_(h_c[:, r:], b_v.t().to(out.dtype), alpha=scaling)
        ctx.mark_dirty(out)
        ctx.save_for_backward(h_c, b_q, b_v)
        ctx.scaling, ctx.h_shape, ctx.h_dtype = scaling, h.shape, h.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        h, b_q, b_v = ctx.saved_tensors
        d, r = b_q.shape
        s = ctx.scaling
        need_h, need_q, need_v = ctx.needs_input_grad[1:4]
        grad_h = grad_q = grad_v = None
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(h.dtype)
            g_q, g_v, h_q, h_v = g[:, :d], g[:, 2 * d :], h[:, :r], h[:, r:]
            if need_h:  # formed as (2r x N) and handed on transposed: A's backward reads it fast too
                parts = [b.to(g.dtype).t() @ part.t() for part, b in ((g_q, b_q), (g_v, b_v))]
                grad_h = torch.cat(parts).mul_(s).t().view(ctx.h_shape).to(ctx.h_dtype)
            if need_q:
                grad_q = (h_q.t() @ g_q).mul_(s).t().to(b_q.dtype)
            if need_v:
                grad_v = (h_v.t() @ g_v).mul_(s).t().to(b_v.dtype)
        return grad, grad_h, grad_q, grad_v, None


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
        h = F.linear(self.dropout(x), torch.cat([self.lora_A_q.weight, self.lora_A_v.weight]))
        return AddQV.apply(out, h, self.lora_B_q.weight, self.lora_B_v.weight, self.scaling)


def inject_qv_lora(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float) -> nn.Module:
    """Replace each named fused-qkv Linear of ``model`` by a :class:`QVLoRALinear` around it."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QVLoRALinear(getattr(parent, child), rank, alpha, dropout))
    return model
