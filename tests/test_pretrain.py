"""Pretraining writes a loadable backbone; the shipped pocket backbone is intact and is the default."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from src.config import PROJECT_ROOT
from src.models.backbone import create_backbone
from src.pretrain import FORMAT, pretrain, tensors_checksum
from tests.conftest import compose_train

SHIPPED = PROJECT_ROOT / "weights" / "pocket_tiny.safetensors"


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def compose_pretrain(overrides: list[str], tmp_path: Path):
    return compose_train(overrides, tmp_path, config_name="pretrain")


def test_pretrain_runs_a_few_steps_and_writes_a_loadable_backbone(tmp_path: Path) -> None:
    export = tmp_path / "pb.safetensors"
    cfg = compose_pretrain(
        [
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "dataset.sizes.val=32",
            "dataset.sizes.test=32",
            "dataset.batch_size=16",
            "logger=none",
            f"export={export}",
        ],
        tmp_path,
    )
    result = pretrain(cfg)
    meta = metadata(export)
    assert meta["format"] == FORMAT
    assert json.loads(meta["steps"]) == 4 and json.loads(meta["images_seen"]) == 64
    assert json.loads(meta["pretraining_task"])["findings"] == ["cavity", "effusion", "cardiomegaly", "line"]
    assert json.loads(meta["backbone"])["name"] == cfg.backbone.name
    state = load_file(str(export))
    assert not any(k.startswith("head.") for k in state)
    assert meta["sha256_tensors"] == tensors_checksum(state)
    model, report = create_backbone(
        cfg.backbone.name, num_classes=2, img_size=cfg.backbone.img_size, checkpoint=str(export),
        model_kwargs=dict(cfg.backbone.kwargs),
    )  # fmt: skip
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert result["export"] == str(export)


def test_downstream_task_is_not_a_pretraining_task(tmp_path: Path) -> None:
    pre = compose_pretrain([], tmp_path)
    down = compose_train([], tmp_path)
    assert not set(down.dataset.findings) & set(pre.dataset.findings)


def test_shipped_backbone_matches_its_recorded_checksum_and_metadata() -> None:
    meta = metadata(SHIPPED)
    assert meta["format"] == FORMAT
    assert tensors_checksum(load_file(str(SHIPPED))) == meta["sha256_tensors"]
    assert json.loads(meta["backbone"])["name"] == "vit_tiny_patch16_224"
    assert json.loads(meta["steps"]) > 0 and json.loads(meta["seed"]) == 0
    assert SHIPPED.stat().st_size <= 10 * 1024 * 1024


def test_default_config_resolves_to_the_shipped_backbone(tmp_path: Path) -> None:
    cfg = compose_train([], tmp_path)
    assert Path(cfg.backbone.checkpoint) == SHIPPED
    assert cfg.peft.name == "lora" and cfg.rank == 4 and cfg.dataset.name == "synthetic"
    # The preset must still describe the architecture the file was pretrained with.
    recorded = json.loads(metadata(SHIPPED)["backbone"])
    for key in ("name", "img_size", "kwargs"):
        assert recorded[key] == OmegaConf.to_container(cfg.backbone, resolve=True)[key], key
