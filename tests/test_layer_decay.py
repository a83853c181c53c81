"""The MAE fine-tuning recipe's knobs: layer-wise lr decay, warm-up in epochs, drop path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from src.errors import UserError
from src.models.backbone import create_backbone
from src.optim import build_optimizer, warmup_cosine, warmup_steps
from src.strategies.lora import LoRA
from src.train import build_model, train
from tests.conftest import TINY, compose_train

DEPTH = 4
DEEPER = {**TINY, "model_kwargs": {**TINY["model_kwargs"], "depth": DEPTH}}
ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True}


def group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_block_lrs_follow_decay_to_the_power_of_depth_from_the_top() -> None:
    model, _ = create_backbone(num_classes=2, **DEEPER)
    opt = build_optimizer(model, ADAMW, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    for i, block in enumerate(model.blocks):  # block i: decay^(L - i)
        assert group_of(opt, block.attn.qkv.weight)["lr"] == pytest.approx(0.5 ** (DEPTH - i))
        assert group_of(opt, block.norm1.weight)["weight_decay"] == 0.0
    assert group_of(opt, model.head.weight)["lr"] == 1.0
    assert (
        group_of(opt, model.norm.weight)["lr"] == 0.5
    )  # timm's grouping: the final norm with the last block
    for embedding in (model.cls_token, model.pos_embed, model.patch_embed.proj.weight):
        assert group_of(opt, embedding)["lr"] == pytest.approx(0.5 ** (DEPTH + 1))
    assert opt.param_groups[0]["lr"] == 1.0  # deepest (undecayed) first
    assert len({g["name"] for g in opt.param_groups}) == len(opt.param_groups)  # LearningRateMonitor keys
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_layer_decay_reaches_adapter_weights_and_skips_frozen_ones() -> None:
    model, _ = create_backbone(num_classes=2, **DEEPER)
    model = LoRA(rank=2, alpha=2, targets="qv").apply(model)
    opt = build_optimizer(model, SGD, lr=0.1, layer_decay=0.65, no_weight_decay=["*lora_*"])
    qkv = model.blocks[1].attn.qkv
    assert group_of(opt, qkv.lora_A_q.weight)["lr"] == pytest.approx(0.1 * 0.65 ** (DEPTH - 1))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    assert group_of(opt, qkv.lora_B_v.weight)["weight_decay"] == 0.0  # adapter parameters: no decay


def test_schedule_keeps_each_group_at_its_scale_down_to_the_scaled_floor() -> None:
    model, _ = create_backbone(num_classes=2, **DEEPER)
    opt = build_optimizer(model, ADAMW, lr=1.0, layer_decay=0.5)
    sched = warmup_cosine(opt, total_steps=20, warmup_steps=5, min_lr=0.01)
    for _ in range(20):
        opt.step()
        sched.step()
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(0.01 * group["lr_scale"])


def test_layer_decay_needs_blocks_and_a_sane_value() -> None:
    with pytest.raises(UserError, match=r"optim\.layer_decay"):
        build_optimizer(torch.nn.Linear(3, 2), SGD, layer_decay=0.65)
    model, _ = create_backbone(num_classes=2, **DEEPER)
    with pytest.raises(UserError, match=r"optim\.layer_decay=1\.5"):
        build_optimizer(model, SGD, layer_decay=1.5)


def test_warmup_epochs_replace_the_fraction() -> None:
    assert warmup_steps(1000, max_epochs=100, fraction=0.3, epochs=5) == 50
    assert warmup_steps(1000, max_epochs=100, fraction=0.3) == 300
    with pytest.raises(UserError, match="warmup_epochs"):
        warmup_steps(1000, max_epochs=-1, fraction=0.0, epochs=5)


def test_drop_path_from_the_backbone_config_is_active_only_in_training(tmp_path: Path) -> None:
    cfg = compose_train(
        ["+backbone.kwargs.drop_path_rate=0.5", "backbone.checkpoint=null", "peft=full"], tmp_path
    )
    model, _ = build_model(cfg, task=type("T", (), {"num_outputs": 2})())
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.5)  # timm: linear in depth up to the rate
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(0)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_a_run_trains_with_layer_decay_warmup_epochs_and_drop_path(make_cfg) -> None:
    cfg = make_cfg(
        "optim.layer_decay=0.65", "optim.warmup_epochs=1", "+backbone.kwargs.drop_path_rate=0.1", "debug=fdr"
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["test/loss"])  # the run trained and tested without blowing up
