"""Sparse delta parameters: train k chosen entries of frozen Linear weights, nothing else (as SPT's delta).

For a frozen Linear ``W`` (out x in) with chosen flat positions ``p_1..p_k`` (row ``r_i = p_i // in``, column
``c_i = p_i % in``) and trainable values ``v`` (k,), the layer computes

    y = x W^T + b + x S(v)^T,   S(v)[r_i, c_i] = v_i (zero elsewhere).

In fp32 / fp64 that is one product with the merged weight ``W + S(v)`` (nothing is lost to rounding that
matters). Under autocast to a lower precision (bf16 under ``bf16-mixed``) the base product runs in that
dtype, as a plain Linear's would, and the sparse product separately, in fp32 from the fp32 master values:
the delta is never folded into a bf16 copy of ``W`` (``bf16(W + v)`` drops any update below half a bf16
step of ``|W|``, and the importance scores favour large ``|W|``, where that step is largest). The delta's
contribution is thus rounded once, when added to the output, as LoRA's separate path under autocast is.

With ``G = dL/dy`` and the inputs ``X`` flattened to N rows (N = batch x tokens):

    dL/dx   = G (W + S(v))                       (under autocast: G W + G S(v), the sparse part in fp32)
    dL/dv_i = sum_n G[n, r_i] X[n, c_i]          (the dense gradient G^T X gathered at (r_i, c_i))

:class:`SparseDeltaLinearFn` computes the second line directly, as k dot products of length N, with torch's
sampled dense-dense matmul (``torch.sparse.sampled_addmm``, G^T X evaluated at the CSR pattern of the
selection only): the dense (out x in) weight gradient is never formed, and the frozen weight gets no
gradient and no optimizer state. Only when the weight itself requires grad (the importance pass before
training) is the dense ``G^T X`` returned for it. The products with S and S^T are ``F.embedding_bag`` sums
over the rows of ``X^T`` (``G^T``): on CPU several times faster than torch's CSR matmul, which also refuses
bf16, and the same op on CUDA. Saved for backward: the input in the compute dtype (what an autocast Linear
saves), not an fp32 copy.

All values of every adapted matrix live in one flat :class:`SparseDelta` (``values`` and an int32
``indices`` buffer of positions in the concatenation of the matrices, sorted), so the parameter count is
fixed by the budget alone: a model rebuilt from the config has the right shapes before a checkpoint or
adapter file fills in which entries they are.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Pattern:
    """One matrix's selection: flat row-major positions ``index``, as CSR (rows of S: ``crow``, ``col``) and
    CSC (rows of S^T: ``ccol``, ``row``); ``order`` takes the row-major values to column-major order.
    (Not a tuple: gradcheck would unpack it.)"""

    shape: tuple[int, int]
    index: Tensor
    crow: Tensor
    col: Tensor
    ccol: Tensor
    row: Tensor
    order: Tensor


def sparse_pattern(index: Tensor, shape: tuple[int, int]) -> Pattern:
    """The :class:`Pattern` of the sorted row-major positions ``index`` in an (out x in) matrix."""
    rows, width = shape
    row, col = index // width, index % width
    crow = torch.zeros(rows + 1, dtype=torch.long, device=index.device)
    crow[1:] = torch.bincount(row, minlength=rows).cumsum(0)
    order = torch.argsort(col * rows + row)
    ccol = torch.zeros(width + 1, dtype=torch.long, device=index.device)
    ccol[1:] = torch.bincount(col, minlength=width).cumsum(0)
    return Pattern((rows, width), index, crow, col, ccol, row[order], order)


def merged_weight(weight: Tensor, values: Tensor, index: Tensor) -> Tensor:
    """W + S(v) out of place: unselected entries are copied bit for bit."""
    return weight.flatten().index_add(0, index, values.to(weight.dtype)).view_as(weight)


def transposed(flat: Tensor, dtype: torch.dtype) -> Tensor:
    """(N x m) -> contiguous (m x N) in ``dtype``, in one copy (``.to`` would keep a same-dtype view strided)."""
    return torch.empty(flat.shape[::-1], dtype=dtype, device=flat.device).copy_(flat.t())


def sparse_product(rows_t: Tensor, starts: Tensor, picks: Tensor, weights: Tensor) -> Tensor:
    """(M x N): output row j = sum of weights[i] * rows_t[picks[i]] over i in [starts[j], starts[j + 1])."""
    return F.embedding_bag(picks, rows_t, starts[:-1], mode="sum", per_sample_weights=weights)


def gathered_gradient(grad_t: Tensor, inputs_t: Tensor, pattern: Pattern) -> Tensor:
    """(G^T X) at the CSR pattern without forming G^T X: torch's sampled dense-dense matmul (SDDMM).

    ``grad_t`` is G^T (out x N) and ``inputs_t`` X^T (in x N), both contiguous, so every dot product reads
    two contiguous rows (several times faster than strided operands on CPU).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = torch.sparse_csr_tensor(
            pattern.crow,
            pattern.col,
            torch.zeros(pattern.col.numel(), dtype=grad_t.dtype, device=grad_t.device),
            size=pattern.shape,
            check_invariants=False,
        )
        return torch.sparse.sampled_addmm(csr, grad_t, inputs_t.t(), beta=0.0).values()


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a Linear computes ``x`` in here: autocast's where autocast is on (fp64 is left alone)."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return x.dtype


class SparseDeltaLinearFn(torch.autograd.Function):
    """y = x W^T + b + x S(v)^T with gradients for x, v (and b, or W, only when they require grad)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        values: Tensor,
        pattern: Pattern,
        dtype: torch.dtype,
    ) -> Tensor:
        # Explicit dtypes: the base product in ``dtype``, the sparse one at least in fp32 (SDDMM and
        # embedding_bag's weighted sums take fp32 / fp64, and fp32 keeps small updates).
        exact = torch.promote_types(torch.promote_types(values.dtype, dtype), torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(dtype)
            b = None if bias is None else bias.to(dtype)
            if dtype == exact:  # fp32 / fp64: W + S(v) keeps v, and one product is faster than two
                y = F.linear(xc, merged_weight(weight.to(dtype), values, pattern.index), b)
            else:
                y = F.linear(xc, weight.to(dtype), b)
                flat = xc.reshape(-1, xc.shape[-1])
                v = values.detach().to(exact)  # detached: embedding_bag's lighter inference kernel
                delta_t = sparse_product(transposed(flat, exact), pattern.crow, pattern.col, v)
                y.view(-1, y.shape[-1]).add_(delta_t.t())
        ctx.save_for_backward(xc, weight, values)
        ctx.pattern, ctx.exact, ctx.x_dtype, ctx.has_bias = pattern, exact, x.dtype, bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        xc, weight, values = ctx.saved_tensors
        pattern, exact = ctx.pattern, ctx.exact
        need_x, need_w, need_b, need_v = ctx.needs_input_grad[:4]
        g = grad_y.reshape(-1, grad_y.shape[-1]).to(xc.dtype)
        flat_x = xc.reshape(-1, xc.shape[-1])
        grad_x = grad_w = grad_b = grad_v = None
        grad_t = transposed(g, exact) if need_v or (need_x and g.dtype != exact) else None
        if need_x and g.dtype == exact:
            grad_x = (g @ merged_weight(weight.to(g.dtype), values, pattern.index)).view(xc.shape)
        elif need_x:
            sparse_t = sparse_product(grad_t, pattern.ccol, pattern.row, values.to(exact)[pattern.order])
            grad_x = (g @ weight.to(g.dtype)).add_(sparse_t.t()).view(xc.shape)
        if grad_x is not None:
            grad_x = grad_x.to(ctx.x_dtype)
        if need_w:
            grad_w = (g.t() @ flat_x).to(weight.dtype)
        if need_b and ctx.has_bias:
            grad_b = g.sum(0)
        if need_v:
            grad_v = gathered_gradient(grad_t, transposed(flat_x, exact), pattern).to(values.dtype)
        return grad_x, grad_w, grad_b, grad_v, None, None


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
        self._patterns: list[Pattern] = []

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
            self._patterns = [sparse_pattern(i, s) for i, s in zip(self._local, self.shapes, strict=True)]
        self._key = key

    def segment(self, slot: int) -> tuple[Tensor, Tensor]:
        """(values, local flat positions) of matrix ``slot``."""
        self._refresh()
        return self.values[self._bounds[slot] : self._bounds[slot + 1]], self._local[slot]

    def pattern(self, slot: int) -> Pattern:
        """Matrix ``slot``'s selection as CSR and CSC."""
        self._refresh()
        return self._patterns[slot]

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
        values, _ = self.delta.segment(self.slot)
        pattern = self.delta.pattern(self.slot)
        return SparseDeltaLinearFn.apply(
            x, self.base.weight, self.base.bias, values, pattern, compute_dtype(x)
        )

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
