"""Backbone presets: the timm model, weights tag and normalisation each preset and size resolves to, and the
architecture it builds (on the meta device: no memory, no download)."""

from __future__ import annotations

import pytest
import torch

from src.models.backbone import create_backbone
from src.models.timm_names import timm_name
from tests.conftest import compose_train

IMAGENET_MEAN = pytest.approx([0.485, 0.456, 0.406])
HALF = pytest.approx([0.5, 0.5, 0.5])
# (overrides, timm model, mean, backbone weights without the head: timm's published counts minus the 1k head)
PRESETS = [
    (["backbone=vit_tiny"], "vit_tiny_patch16_224", HALF, 5_717_416 - 193_000),
    (["backbone=vit_small"], "vit_small_patch16_224", HALF, 22_050_664 - 385_000),
    (["backbone=vit_base"], "vit_base_patch16_224", HALF, 86_567_656 - 769_000),
    (["backbone=vit_large"], "vit_large_patch16_224", HALF, 304_326_632 - 1_025_000),
    (["backbone=vit_base", "backbone.img_size=384"], "vit_base_patch16_384", HALF, 86_859_496 - 769_000),
    (
        ["backbone=vit_base", "backbone.img_size=384", "backbone.tag=augreg_in1k"],
        "vit_base_patch16_384.augreg_in1k",
        HALF,
        86_859_496 - 769_000,
    ),
    (["backbone=vit_small", "backbone.tag=augreg_in21k"], "vit_small_patch16_224.augreg_in21k", HALF, None),
    (["backbone=vit_large", "backbone.img_size=384"], "vit_large_patch16_384", HALF, None),
    (["backbone=vit_base_dino"], "vit_base_patch16_224.dino", IMAGENET_MEAN, 86_567_656 - 769_000),
    (["backbone=deit_base"], "deit_base_patch16_224", IMAGENET_MEAN, 86_567_656 - 769_000),
    (["backbone=deit_base", "backbone.img_size=384"], "deit_base_patch16_384", IMAGENET_MEAN, None),
    (["backbone=vit_base_mae"], "vit_base_patch16_224.mae", IMAGENET_MEAN, 86_567_656 - 769_000),
    # no 384 px DINO weights: the 224 px model is built at 384 and its position embedding resampled
    (["backbone=vit_base_dino", "backbone.img_size=384"], "vit_base_patch16_224.dino", IMAGENET_MEAN, None),
]


@pytest.mark.parametrize(
    ("overrides", "name", "mean", "weights"), PRESETS, ids=[" ".join(p[0]) for p in PRESETS]
)
def test_preset_resolves_the_timm_model_and_its_normalisation(
    overrides: list[str], name: str, mean: object, weights: int | None
) -> None:
    cfg = compose_train(overrides)
    b = cfg.backbone
    assert b.name == name and list(b.mean) == mean and cfg.dataset.image_size == b.img_size
    assert b.pretrained is False and b.checkpoint is None  # nothing downloads unless asked
    if weights is None:
        return
    with torch.device("meta"):
        model, _ = create_backbone(b.name, 2, b.img_size, model_kwargs=dict(b.kwargs))
    head = model.get_classifier()
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in head.parameters()) == weights
    assert model.patch_embed.grid_size == (b.img_size // 16,) * 2


def test_mae_preset_pools_by_average_with_fc_norm_and_drop_path() -> None:
    b = compose_train(["backbone=vit_base_mae"]).backbone
    with torch.device("meta"):
        model, _ = create_backbone(b.name, 2, b.img_size, model_kwargs=dict(b.kwargs))
    assert model.global_pool == "avg" and isinstance(model.fc_norm, torch.nn.LayerNorm)
    assert isinstance(model.norm, torch.nn.Identity)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_timm_name_prefers_the_size_specific_weights() -> None:
    assert (
        timm_name("vit_base_patch16", 384, "augreg_in21k_ft_in1k")
        == "vit_base_patch16_384.augreg_in21k_ft_in1k"
    )
    assert (
        timm_name("vit_base_patch16", 384, "augreg2_in21k_ft_in1k")
        == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    )
    assert timm_name("vit_base_patch16", 256, None) == "vit_base_patch16_224"
