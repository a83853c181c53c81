"""The adapter bank: tasks with different class counts over one backbone, switched in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.adapter import class_names_json, load_adapter, save_adapter
from src.bank import AdapterBank
from src.errors import UserError
from src.models.backbone import create_backbone
from src.strategies.bitfit import BitFit
from src.strategies.lora import LoRA
from tests.conftest import TINY


def model_for(classes: int, strategy, backbone: dict) -> torch.nn.Module:
    model, _ = create_backbone(num_classes=classes, **TINY)
    model.load_state_dict(backbone, strict=False)
    return strategy.apply(model).eval()


def make_adapter(path: Path, classes: int, seed: int, backbone: dict, strategy=None) -> torch.nn.Module:
    """A 'trained' adapter: random values in every trainable tensor."""
    torch.manual_seed(seed)
    model = model_for(classes, strategy or LoRA(rank=2), backbone)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
    names = [f"c{i}" for i in range(classes)]
    meta = {
        "backbone": TINY["name"],
        "img_size": "32",
        "class_names": class_names_json(names),
        **(strategy or LoRA(rank=2)).metadata(),
    }
    save_adapter(model, path, meta)
    return model


@pytest.fixture
def backbone() -> dict:
    torch.manual_seed(0)
    return {
        k: v for k, v in create_backbone(num_classes=2, **TINY)[0].state_dict().items() if "head" not in k
    }


def test_switching_tasks_gives_each_tasks_own_outputs(backbone: dict, tmp_path: Path) -> None:
    classes = {"tb": 2, "cells": 4, "nih": 14}
    references = {
        n: make_adapter(tmp_path / f"{n}.safetensors", c, i, backbone)
        for i, (n, c) in enumerate(classes.items())
    }
    bank = AdapterBank(model_for(2, LoRA(rank=2), backbone), LoRA(rank=2))
    backbone_before = {
        k: v.clone() for k, v in bank.model.state_dict().items() if "lora_" not in k and "head" not in k
    }
    for name in classes:
        bank.add(name, tmp_path / f"{name}.safetensors")
    x = torch.randn(3, 3, 32, 32)
    for name in ["nih", "tb", "cells", "tb"]:
        bank.switch(name)
        with torch.no_grad():
            out = bank.model(x)
        assert out.shape == (3, classes[name])
        torch.testing.assert_close(out, references[name](x), rtol=0, atol=0)
    after = {k: v for k, v in bank.model.state_dict().items() if k in backbone_before}
    assert all(torch.equal(after[k], v) for k, v in backbone_before.items())


def test_bank_matches_load_adapter(backbone: dict, tmp_path: Path) -> None:
    make_adapter(tmp_path / "a.safetensors", 3, 5, backbone, BitFit())
    bank = AdapterBank(model_for(2, BitFit(), backbone), BitFit())
    bank.add("a", tmp_path / "a.safetensors")
    bank.switch("a")
    fresh = model_for(3, BitFit(), backbone)
    load_adapter(fresh, tmp_path / "a.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bank.model(x), fresh(x))


def test_bank_refuses_adapters_that_do_not_fit(backbone: dict, tmp_path: Path) -> None:
    make_adapter(tmp_path / "r2.safetensors", 2, 0, backbone, LoRA(rank=2))
    make_adapter(tmp_path / "r4.safetensors", 2, 0, backbone, LoRA(rank=4))
    bank = AdapterBank(model_for(2, LoRA(rank=2), backbone), LoRA(rank=2))
    bank.add("r2", tmp_path / "r2.safetensors")
    with pytest.raises(UserError, match="rank '4' vs '2'"):
        bank.add("r4", tmp_path / "r4.safetensors")
    with pytest.raises(UserError, match="does not match the bank's model"):
        AdapterBank(model_for(2, LoRA(rank=2), backbone), LoRA(rank=2)).add("r4", tmp_path / "r4.safetensors")
    with pytest.raises(UserError, match="no adapter 'x'"):
        bank.switch("x")
