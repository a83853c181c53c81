"""Sparse delta parameters: train k chosen entries of frozen Linear weights, nothing else (as SPT's delta).

For a frozen Linear ``W`` (out x in) with chosen flat positions ``p_1..p_k`` (row ``r_i = p_i // in``, column
``c_i = p_i % in``) and trainable values ``v`` (k,), the layer computes

    W' = W + S(v),   S(v)[r_i, c_i] = v_i (zero elsewhere),   y = x W'^T + b.

With ``G = dL/dy`` and the inputs ``X`` flattened to N rows (N = batch x tokens):

    dL/dx   = G W'                               (as a plain Linear)
    dL/dv_i = sum_n G[n, r_i] X[n, c_i]          (the dense gradient G^T X gathered at (r_i, c_i))

:class:`SparseDeltaLinearFn` computes the second line directly, as k dot products of length N over gathered
rows of ``G^T`` and ``X^T`` (chunked to bound the temporary memory), so the dense (out x in) weight
gradient is never formed and the frozen weight gets no gradient and no optimizer state. Only when the weight
itself requires grad (the importance pass before training) is the dense ``G^T X`` returned for it.

All values of every adapted matrix live in one flat :class:`SparseDelta` (``values`` and an int32
``indices`` buffer of positions in the concatenation of the matrices, sorted), so the parameter count is
fixed by the budget alone: a model rebuilt from the config has the right shapes before a checkpoint or
adapter file fills in which entries they are.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Elements per gathered (chunk x N) block in the backward pass: 4 M floats = 16 MB per operand.
CHUNK_ELEMENTS = 1 << 22


def merged_weight(weight: Tensor, values: Tensor, index: Tensor) -> Tensor:
    """W + S(v) out of place: unselected entries are copied bit for bit."""
    return weight.flatten().index_add(0, index, values.to(weight.dtype)).view_as(weight)


def gathered_gradient(grad_out: Tensor, inputs: Tensor, index: Tensor, in_features: int) -> Tensor:
    """(G^T X)[r_i, c_i] for every i without forming G^T X; G is (N x out), X is (N x in)."""
    g_t, x_t = grad_out.t().contiguous(), inputs.t().contiguous()
    rows, cols = index // in_features, index % in_features
    chunk = max(1, CHUNK_ELEMENTS // max(1, g_t.shape[1]))
    out = torch.empty(index.numel(), dtype=grad_out.dtype, device=grad_out.device)
    for start in range(0, index.numel(), chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        out[start : start + chunk] = torch.bmm(g_t[r].unsqueeze(1), x_t[c].unsqueeze(2)).view(-1)
    return out


class SparseDeltaLinearFn(torch.autograd.Function):
    """y = x (W + S(v))^T + b with gradients for x, v (and b, or W, only when they require grad)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, values: Tensor, index: Tensor
    ) -> Tensor:
        ctx.save_for_backward(x, weight, values, index)
        ctx.has_bias = bias is not None
        return F.linear(x, merged_weight(weight, values, index), bias)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, values, index = ctx.saved_tensors
        need_x, need_w, need_b, need_v, _ = ctx.needs_input_grad
        g = grad_y.reshape(-1, grad_y.shape[-1])
        flat_x = x.reshape(-1, x.shape[-1])
        grad_x = grad_w = grad_b = grad_v = None
        if need_x:
            grad_x = (g @ merged_weight(weight, values, index).to(g.dtype)).view_as(x)
        if need_w:
            grad_w = (g.t() @ flat_x.to(g.dtype)).to(weight.dtype)
        if need_b and ctx.has_bias:
            grad_b = g.sum(0)
        if need_v:
            grad_v = gathered_gradient(g, flat_x.to(g.dtype), index, weight.shape[1]).to(values.dtype)
        return grad_x, grad_w, grad_b, grad_v, None


class SparseDelta(nn.Module):
    """The k trainable values and their positions, flat over the matrices of sizes ``sizes`` (in order)."""

    def __init__(self, sizes: list[int], k: int) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        if not 0 < k <= self.starts[-1]:
            raise ValueError(f"k={k} outside (0, {self.starts[-1]}]")
        self.values = nn.Parameter(torch.zeros(k))
        # Evenly spread placeholder positions until the importance pass or a loaded file sets the real ones.
        self.register_buffer("indices", torch.linspace(0, self.starts[-1] - 1, k).long().to(torch.int32))
        self._key: tuple[int, int, str] | None = None
        self._bounds: list[int] = []
        self._local: list[Tensor] = []

    def set_selection(self, local: list[Tensor]) -> None:
        """Install per-matrix local flat positions (each sorted) and zero the values."""
        flat = torch.cat([idx.long().cpu() + start for idx, start in zip(local, self.starts, strict=False)])
        if flat.numel() != self.values.numel():
            raise ValueError(f"selection holds {flat.numel()} entries, the budget is {self.values.numel()}")
        with torch.no_grad():
            self.indices.copy_(flat.to(torch.int32))
            self.values.zero_()

    def _refresh(self) -> None:
        # The positions change only when a file, a checkpoint or an adapter-bank switch replaces them.
        idx = self.indices
        key = (idx.data_ptr(), idx._version, str(idx.device))
        if key == self._key:
            return
        # Normal tensors even when first needed under inference mode (validation): training saves them later.
        with torch.inference_mode(False):
            flat = idx.long()
            starts = torch.tensor(self.starts, device=flat.device)
            self._bounds = torch.searchsorted(flat, starts).tolist()
            self._local = [
                flat[a:b] - start for (a, b), start in zip(pairwise(self._bounds), self.starts, strict=False)
            ]
        self._key = key

    def segment(self, slot: int) -> tuple[Tensor, Tensor]:
        """(values, local flat positions) of matrix ``slot``."""
        self._refresh()
        return self.values[self._bounds[slot] : self._bounds[slot + 1]], self._local[slot]

    def counts(self) -> list[int]:
        """Selected entries per matrix."""
        self._refresh()
        return [b - a for a, b in pairwise(self._bounds)]


class SparseLinear(nn.Module):
    """A frozen Linear plus its share of a :class:`SparseDelta`; ``merge`` folds the delta into the weight."""

    def __init__(self, base: nn.Linear, delta: SparseDelta, slot: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.slot, self.merged = slot, False
        # A plain reference: the delta is registered once on the model, not under every layer.
        self.__dict__["delta"] = delta

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)
        values, index = self.delta.segment(self.slot)
        return SparseDeltaLinearFn.apply(x, self.base.weight, self.base.bias, values, index)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            values, index = self.delta.segment(self.slot)
            self.base.weight.view(-1).index_add_(0, index, values.to(self.base.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            values, index = self.delta.segment(self.slot)
            self.base.weight.view(-1).index_add_(0, index, -values.to(self.base.weight.dtype))
            self.merged = False
