"""Sparse delta parameters: train k chosen entries of frozen Linear weights, nothing else (as SPT's delta).

For a frozen Linear ``W`` (out x in) with chosen flat positions ``p_1..p_k`` (row ``r_i = p_i // in``, column
``c_i = p_i % in``) and trainable values ``v`` (k,), the layer computes

    W' = W + S(v),   S(v)[r_i, c_i] = v_i (zero elsewhere),   y = x W'^T + b.

With ``G = dL/dy`` and the inputs ``X`` flattened to N rows (N = batch x tokens):

    dL/dx   = G W'                               (as a plain Linear)
    dL/dv_i = sum_n G[n, r_i] X[n, c_i]          (the dense gradient G^T X gathered at (r_i, c_i))

:class:`SparseDeltaLinearFn` computes the second line directly, as k dot products of length N, with torch's
sampled dense-dense matmul (``torch.sparse.sampled_addmm``, G^T X evaluated at the CSR pattern of the
selection only): the dense (out x in) weight gradient is never formed, and the frozen weight gets no
gradient and no optimizer state. Only when the weight
itself requires grad (the importance pass before training) is the dense ``G^T X`` returned for it.

All values of every adapted matrix live in one flat :class:`SparseDelta` (``values`` and an int32
``indices`` buffer of positions in the concatenation of the matrices, sorted), so the parameter count is
fixed by the budget alone: a model rebuilt from the config has the right shapes before a checkpoint or
adapter file fills in which entries they are.
"""

from __future__ import annotations

import warnings
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def merged_weight(weight: Tensor, values: Tensor, index: Tensor) -> Tensor:
    """W + S(v) out of place: unselected entries are copied bit for bit."""
    return weight.flatten().index_add(0, index, values.to(weight.dtype)).view_as(weight)


def csr_pattern(index: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(crow_indices, col_indices) of the sorted row-major positions ``index`` in an (out x in) matrix."""
    rows, width = shape
    crow = torch.zeros(rows + 1, dtype=torch.long, device=index.device)
    crow[1:] = torch.bincount(index // width, minlength=rows).cumsum(0)
    return crow, index % width


def gathered_gradient(
    grad_out: Tensor, inputs: Tensor, crow: Tensor, col: Tensor, shape: tuple[int, int]
) -> Tensor:
    """(G^T X) at the CSR pattern without forming G^T X: torch's sampled dense-dense matmul (SDDMM)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            crow,
            col,
            torch.zeros(col.numel(), dtype=grad_out.dtype, device=grad_out.device),
            size=shape,
            check_invariants=False,
        )
        return torch.sparse.sampled_addmm(pattern, grad_out.t(), inputs, beta=0.0).values()


class SparseDeltaLinearFn(torch.autograd.Function):
    """y = x (W + S(v))^T + b with gradients for x, v (and b, or W, only when they require grad)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        values: Tensor,
        index: Tensor,
        crow: Tensor,
        col: Tensor,
    ) -> Tensor:
        ctx.save_for_backward(x, weight, values, index, crow, col)
        ctx.has_bias = bias is not None
        return F.linear(x, merged_weight(weight, values, index), bias)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, values, index, crow, col = ctx.saved_tensors
        need_x, need_w, need_b, need_v = ctx.needs_input_grad[:4]
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
            # SDDMM kernels take float32 / float64, not the bf16 / fp16 of mixed precision.
            dtype = g.dtype if g.dtype in (torch.float32, torch.float64) else torch.float32
            shape = tuple(weight.shape)
            grad_v = gathered_gradient(g.to(dtype), flat_x.to(dtype), crow, col, shape).to(values.dtype)
        return grad_x, grad_w, grad_b, grad_v, None, None, None


class SparseDelta(nn.Module):
    """The k trainable values and their positions, flat over matrices of ``shapes`` (out, in), in order."""

    def __init__(self, shapes: list[tuple[int, int]], k: int) -> None:
        super().__init__()
        self.shapes = [tuple(s) for s in shapes]
        sizes = [rows * width for rows, width in self.shapes]
        self.starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        if not 0 < k <= self.starts[-1]:
            raise ValueError(f"k={k} outside (0, {self.starts[-1]}]")
        self.values = nn.Parameter(torch.zeros(k))
        # Evenly spread placeholder positions until the importance pass or a loaded file sets the real ones.
        self.register_buffer("indices", torch.linspace(0, self.starts[-1] - 1, k).long().to(torch.int32))
        self._key: tuple[int, int, str] | None = None
        self._bounds: list[int] = []
        self._local: list[Tensor] = []
        self._csr: list[tuple[Tensor, Tensor]] = []

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
            self._csr = [csr_pattern(i, shape) for i, shape in zip(self._local, self.shapes, strict=True)]
        self._key = key

    def segment(self, slot: int) -> tuple[Tensor, Tensor]:
        """(values, local flat positions) of matrix ``slot``."""
        self._refresh()
        return self.values[self._bounds[slot] : self._bounds[slot + 1]], self._local[slot]

    def pattern(self, slot: int) -> tuple[Tensor, Tensor]:
        """(crow_indices, col_indices) of matrix ``slot``'s selection."""
        self._refresh()
        return self._csr[slot]

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
        crow, col = self.delta.pattern(self.slot)
        return SparseDeltaLinearFn.apply(x, self.base.weight, self.base.bias, values, index, crow, col)

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
