"""MeLo's LoRA files: a reference implementation of MeLo's formula writes one, we load it, outputs match."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from src.errors import UserError
from src.melo import export_melo, load_melo
from src.models.backbone import create_backbone
from src.strategies.lora import LoRA

TINY = {"name": "vit_tiny_patch16_224", "img_size": 32, "model_kwargs": {"patch_size": 8, "depth": 2}}


class MeloQKV(nn.Module):
    """MeLo's _LoRA_qkv_timm, re-written from its description: q and v get s * B(A(x)), s = alpha // r."""

    def __init__(self, qkv: nn.Linear, a_q, b_q, a_v, b_v, scaling: int) -> None:
        super().__init__()
        self.qkv, self.a_q, self.b_q, self.a_v, self.b_v, self.s = qkv, a_q, b_q, a_v, b_v, scaling

    def forward(self, x):
        out = self.qkv(x)
        d = self.qkv.in_features
        out[..., :d] += self.s * self.b_q(self.a_q(x))
        out[..., 2 * d :] += self.s * self.b_v(self.a_v(x))
        return out


def reference_melo(backbone_state: dict, rank: int, alpha: int, classes: int, path: Path) -> nn.Module:
    """A MeLo model with random (non-zero) LoRA weights, saved in MeLo's file layout."""
    model, _ = create_backbone(num_classes=classes, **TINY)
    model.load_state_dict(backbone_state, strict=False)
    tensors = {}
    for i, block in enumerate(model.blocks):
        d = block.attn.qkv.in_features
        parts = []
        for idx in (2 * i, 2 * i + 1):
            a, b = nn.Linear(d, rank, bias=False), nn.Linear(rank, d, bias=False)
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.normal_(b.weight, std=0.05)
            tensors[f"w_a_{idx:03d}"], tensors[f"w_b_{idx:03d}"] = a.weight.detach(), b.weight.detach()
            parts += [a, b]
        block.attn.qkv = MeloQKV(block.attn.qkv, *parts, scaling=alpha // rank)
    nn.init.normal_(model.head.weight)
    nn.init.zeros_(model.head.bias)  # MeLo saves no head bias
    tensors[f"fc_{model.head.in_features}in_{classes}out"] = model.head.weight.detach()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return model.eval()


def ours(backbone_state: dict, rank: int, classes: int) -> nn.Module:
    model, _ = create_backbone(num_classes=classes, **TINY)
    model.load_state_dict(backbone_state, strict=False)
    return LoRA(rank=rank, alpha=rank, targets="qv").apply(model).eval()


@pytest.mark.parametrize(("rank", "alpha"), [(4, 4), (2, 5), (4, 16)])
def test_melo_file_loads_to_the_same_outputs(rank: int, alpha: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = {
        k: v for k, v in create_backbone(num_classes=3, **TINY)[0].state_dict().items() if "head" not in k
    }
    path = tmp_path / "blood-cells_base_lora_4_4.safetensors"
    reference = reference_melo(backbone, rank, alpha, classes=3, path=path)
    model = ours(backbone, rank, classes=3)
    assert load_melo(model, path, alpha=alpha) == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_export_round_trips_through_melos_formula(tmp_path: Path) -> None:
    torch.manual_seed(1)
    backbone = {
        k: v for k, v in create_backbone(num_classes=2, **TINY)[0].state_dict().items() if "head" not in k
    }
    model = ours(backbone, rank=4, classes=2)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.05)
    model.get_classifier().bias.data.zero_()
    path = tmp_path / "ours.safetensors"
    export_melo(model, path, alpha=4)
    again = ours(backbone, rank=4, classes=2)
    load_melo(again, path, alpha=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_melo_mismatches_are_clear(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = {
        k: v for k, v in create_backbone(num_classes=3, **TINY)[0].state_dict().items() if "head" not in k
    }
    path = tmp_path / "m.safetensors"
    reference_melo(backbone, 4, 4, classes=3, path=path)
    with pytest.raises(UserError, match="head fc_192in_3out"):
        load_melo(ours(backbone, 4, classes=2), path)
    with pytest.raises(UserError, match="rank=4"):
        load_melo(ours(backbone, 2, classes=3), path)
    plain, _ = create_backbone(num_classes=3, **TINY)
    with pytest.raises(UserError, match=r"peft\.targets=qv"):
        load_melo(plain, path)
