"""MeLo's LoRA files: a reference implementation of MeLo's formula writes one, we load it, outputs match."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from src.data.image_files import read_image
from src.errors import UserError
from src.melo import export_melo, load_melo, melo_to_adapter
from src.models.backbone import create_backbone
from src.predict import predict
from src.strategies.lora import LoRA
from tests.conftest import TINY


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


def backbone_state() -> dict:
    """A random tiny backbone without its head, shared by the reference and our model."""
    return {
        k: v for k, v in create_backbone(num_classes=2, **TINY)[0].state_dict().items() if "head" not in k
    }


def ours(backbone_state: dict, rank: int, classes: int) -> nn.Module:
    model, _ = create_backbone(num_classes=classes, **TINY)
    model.load_state_dict(backbone_state, strict=False)
    return LoRA(rank=rank, alpha=rank, targets="qv").apply(model).eval()


@pytest.mark.parametrize(("rank", "alpha"), [(4, 4), (2, 5), (4, 16)])
def test_melo_file_loads_to_the_same_outputs(rank: int, alpha: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = backbone_state()
    path = tmp_path / "blood-cells_base_lora_4_4.safetensors"
    reference = reference_melo(backbone, rank, alpha, classes=3, path=path)
    model = ours(backbone, rank, classes=3)
    assert load_melo(model, path, alpha=alpha) == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_export_round_trips_through_melos_formula(tmp_path: Path) -> None:
    torch.manual_seed(1)
    backbone = backbone_state()
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
    backbone = backbone_state()
    path = tmp_path / "m.safetensors"
    reference_melo(backbone, 4, 4, classes=3, path=path)
    with pytest.raises(UserError, match="head fc_192in_3out"):
        load_melo(ours(backbone, 4, classes=2), path)
    with pytest.raises(UserError, match="rank=4"):
        load_melo(ours(backbone, 2, classes=3), path)
    plain, _ = create_backbone(num_classes=3, **TINY)
    with pytest.raises(UserError, match=r"peft\.targets=qv"):
        load_melo(plain, path)


def test_melo_file_converts_to_an_adapter_that_predict_uses(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model, _ = create_backbone(num_classes=4, **TINY)
    backbone = {k: v for k, v in model.state_dict().items() if "head" not in k}
    save_file({k: v.contiguous() for k, v in backbone.items()}, str(tmp_path / "backbone.safetensors"))
    melo_file = tmp_path / "blood-cells_base_lora_4_4.safetensors"
    reference = reference_melo(
        backbone, rank=2, alpha=5, classes=4, path=melo_file
    )  # alpha // r = 2, not 2.5
    preset = {
        "task": "multiclass",
        "color": "rgb",  # as the blood_cells preset: predict must read the stain colours
        "class_names": ["a", "b", "c", "d"],
        "rank": 2,
        "alpha": 5,
        "backbone": {"name": TINY["name"], "img_size": 32, "pretrained": False, "kwargs": TINY["model_kwargs"],
                     "checkpoint": str(tmp_path / "backbone.safetensors"), "mean": [0.5] * 3, "std": [0.5] * 3},
    }  # fmt: skip
    adapter = melo_to_adapter(melo_file, preset, tmp_path / "adapter.safetensors")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    _, probs, classes = predict({"cells": str(adapter)}, [str(image)])
    pixels = read_image(image, 32, "rgb").float().div(255).sub(0.5).div(0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        torch.testing.assert_close(probs["cells"], reference(pixels).softmax(-1), atol=1e-5, rtol=1e-4)
    assert classes["cells"] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("preset", "classes", "size"),
    [("sz_cxr", 2, 224), ("blood_cells", 4, 224), ("nih_cxr14", 14, 384), ("inbreast", 2, 384)],
)
def test_melo_presets_compose(preset: str, classes: int, size: int) -> None:
    from hydra import compose, initialize_config_dir

    from src.config import PROJECT_ROOT

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("predict", overrides=[f"melo={preset}", "melo.file=x.safetensors", "inputs=[a.png]"])
    assert len(cfg.melo.class_names) == classes and cfg.melo.backbone.img_size == size
    assert cfg.melo.rank == 4 and cfg.melo.alpha == 4 and cfg.melo.backbone.pretrained
    assert cfg.melo.color == ("rgb" if preset == "blood_cells" else "gray")
    # MeLo's dataloaders all normalise with ImageNet's mean / std (utils/dataloader_*.py)
    assert list(cfg.melo.backbone.mean) == [0.485, 0.456, 0.406]
    assert list(cfg.melo.backbone.std) == [0.229, 0.224, 0.225]
    # 224 px loaders resize float tensors with torchvision, 384 px ones the PIL image
    assert cfg.melo.resize == ("tensor" if size == 224 else "pil")


def test_melo_preset_without_its_file_is_one_clear_line() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "src.predict", "melo=sz_cxr", "inputs=[a.png]"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "melo.file is required" in result.stderr
    assert "Traceback" not in result.stderr
