"""A local backbone checkpoint wins over ``pretrained: true`` everywhere (train / eval build, predict with a MeLo
preset): with every network path blocked, the run works and the weights are the file's."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import src.models.backbone
from src.adapter import read_metadata
from src.melo import melo_to_adapter
from src.models.backbone import create_backbone
from src.predict import predict
from src.tasks import Task
from src.train import build_model
from tests.conftest import compose_train

KWARGS = {"patch_size": 8, "depth": 2}
NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a tag timm would download with pretrained=True


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import huggingface_hub
    import timm.models._builder

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)


def test_the_network_block_itself_bites(offline) -> None:
    with pytest.raises(AssertionError, match="network"):
        src.models.backbone.timm.create_model(NAME, pretrained=True, num_classes=2, img_size=32, **KWARGS)


def test_local_checkpoint_wins_over_pretrained_in_predict_and_train(offline, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source, _ = create_backbone(NAME, num_classes=2, img_size=32, model_kwargs=KWARGS)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))

    # predict with a MeLo preset that says pretrained: true, and backbone_checkpoint=PATH
    melo_file = tmp_path / "ChinaSetAllFiles_base_lora_4_4.safetensors"
    tensors = {f"w_a_{i:03d}": torch.randn(4, 192) for i in range(4)}
    tensors |= {f"w_b_{i:03d}": torch.zeros(192, 4) for i in range(4)} | {
        "fc_192in_2out": torch.randn(2, 192)
    }
    save_file(tensors, str(melo_file))
    preset = {"task": "binary", "color": "gray", "resize": "tensor", "class_names": ["normal", "tb"], "rank": 4, "alpha": 4,
              "backbone": {"name": NAME, "img_size": 32, "pretrained": True, "checkpoint": None,
                           "kwargs": KWARGS, "mean": [0.5] * 3, "std": [0.5] * 3}}  # fmt: skip
    adapter = melo_to_adapter(melo_file, preset, tmp_path / "adapter.safetensors")
    assert read_metadata(adapter)["resize"] == "tensor"  # predict decodes as MeLo's 224 px loaders
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(image)
    _, probs, _ = predict({"tb": str(adapter)}, [str(image)], backbone_checkpoint=str(weights))
    assert probs["tb"].shape == (1, 2)

    # train / eval build the model through build_model: pretrained=true with a checkpoint reads the file
    cfg = compose_train(
        [
            f"backbone.name={NAME}",
            "backbone.pretrained=true",
            f"backbone.checkpoint={weights}",
            "backbone.img_size=32",
            "backbone.kwargs.depth=2",
            "backbone.kwargs.global_pool=token",
        ],
        tmp_path,
    )
    model, _ = build_model(cfg, Task("binary", ("a", "b")))
    key = "blocks.1.attn.qkv.weight"
    own = {k.removeprefix("base_model.model."): v for k, v in model.state_dict().items()}
    assert torch.equal(
        own.get(key, own.get(key.replace(".weight", ".base_layer.weight"))), source.state_dict()[key]
    )
