"""q/v LoRA unmerged: the in-place q / v update trains as an independent reference and MeLo's formula do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.strategies.lora_qv import AddQV, QVLoRALinear

D, RANK, ALPHA = 8, 2, 5.0  # scaling 2.5


def layer(dtype: torch.dtype = torch.float64, dropout: float = 0.0) -> QVLoRALinear:
    torch.manual_seed(0)
    qv = QVLoRALinear(nn.Linear(D, 3 * D), RANK, ALPHA, dropout).to(dtype)
    for b in (qv.lora_B_q, qv.lora_B_v):
        nn.init.normal_(b.weight)  # B starts at zero: make the update non-zero
    return qv


def trained(qv: QVLoRALinear) -> list[Tensor]:
    return [qv.lora_A_q.weight, qv.lora_B_q.weight, qv.lora_A_v.weight, qv.lora_B_v.weight]


def dense_reference(qv: QVLoRALinear, x: Tensor, dropped: Tensor) -> Tensor:
    """y = x W^T + b + s (d(x) [B_q A_q; 0; B_v A_v]^T), d = dropout: written out, no slicing in place."""
    a_q, b_q, a_v, b_v = trained(qv)
    zeros = torch.zeros(D, D, dtype=x.dtype)
    update = qv.scaling * torch.cat([b_q @ a_q, zeros, b_v @ a_v])
    return F.linear(x, qv.base.weight, qv.base.bias) + dropped @ update.T


def melo_formula(qv: QVLoRALinear, x: Tensor, dropped: Tensor) -> Tensor:
    """MeLo's _LoRA_qkv_timm: qkv[..., :d] += s B_q(A_q(x)); qkv[..., 2d:] += s B_v(A_v(x))."""
    out = qv.base(x)
    out[..., :D] += qv.scaling * qv.lora_B_q(qv.lora_A_q(dropped))
    out[..., 2 * D :] += qv.scaling * qv.lora_B_v(qv.lora_A_v(dropped))
    return out


def grads(forward, qv: QVLoRALinear, x: Tensor, target: Tensor) -> tuple[Tensor, list[Tensor]]:
    params = trained(qv)
    torch.manual_seed(1)  # the same dropout mask in every forward
    out = forward(x)
    inputs = [x, *params] if x.requires_grad else params
    return out, list(torch.autograd.grad((out * target).sum(), inputs))


@pytest.mark.parametrize(("dropout", "x_grad"), [(0.0, True), (0.0, False), (0.3, True)])
def test_unmerged_gradients_match_a_dense_reference_and_melos_formula(dropout: float, x_grad: bool) -> None:
    """x_grad=False: the first block of a frozen backbone, whose input needs no gradient."""
    qv = layer(dropout=dropout).train()
    x = torch.randn(3, 5, D, dtype=torch.float64, requires_grad=x_grad)
    target = torch.randn(3, 5, 3 * D, dtype=torch.float64)
    ours = grads(qv, qv, x, target)
    for reference in (dense_reference, melo_formula):
        want = grads(lambda t, ref=reference: ref(qv, t, F.dropout(t, dropout, training=True)), qv, x, target)
        torch.testing.assert_close(ours[0], want[0], rtol=1e-12, atol=1e-12)
        for got, expected in zip(ours[1], want[1], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert qv.base.weight.grad is None


def test_add_qv_gradcheck() -> None:
    torch.manual_seed(0)
    out = torch.randn(2, 3, 3 * D, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, 2 * RANK, dtype=torch.float64, requires_grad=True)
    b_q, b_v = (torch.randn(D, RANK, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda o, *rest: AddQV.apply(o.clone(), *rest, 1.5), (out, h, b_q, b_v))


def test_unmerged_under_bf16_autocast_and_inference_mode() -> None:
    qv = layer(torch.float32)
    x = torch.randn(4, 6, D)
    with torch.no_grad():
        want = dense_reference(qv, x, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = qv(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trained(qv))
    with torch.inference_mode():
        torch.testing.assert_close(qv(x), want, rtol=1e-5, atol=1e-5)
