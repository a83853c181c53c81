"""Local checkpoints: every format loads, key differences are reported, pickles with code are refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from src.errors import UserError
from src.models.backbone import create_backbone, load_checkpoint

TINY = {"name": "vit_tiny_patch16_224", "img_size": 32, "model_kwargs": {"patch_size": 8, "depth": 2}}


def source_state(num_classes: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model, _ = create_backbone(num_classes=num_classes, **TINY)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write(fmt: str, state: dict, path: Path) -> Path:
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "pth":
        torch.save(state, path)
    elif fmt == "pth_mae":  # MAE / DeiT training scripts nest the weights under "model"
        torch.save({"model": state, "epoch": 3}, path)
    elif fmt == "ckpt_lightning":
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    elif fmt == "npz":
        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    return path


FORMATS = [
    ("safetensors", "w.safetensors"),
    ("pth", "w.pth"),
    ("pth_mae", "w.pth"),
    ("ckpt_lightning", "w.ckpt"),
    ("npz", "w.npz"),
]


@pytest.mark.parametrize(("fmt", "name"), FORMATS, ids=[f for f, _ in FORMATS])
def test_every_format_loads_the_backbone_and_drops_the_old_head(fmt: str, name: str, tmp_path: Path) -> None:
    state = source_state(num_classes=5)
    path = write(fmt, state, tmp_path / name)
    model, report = create_backbone(num_classes=2, checkpoint=str(path), **TINY)
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("head."):
            assert torch.equal(own[key], value), key
    assert sorted(report.skipped_head) == ["head.bias", "head.weight"]
    assert report.missing == [] and report.unexpected == []
    assert own["head.weight"].shape == (2, 192)


def test_missing_and_unexpected_keys_are_reported(tmp_path: Path) -> None:
    state = source_state()
    state.pop("blocks.1.mlp.fc2.weight")
    state["decoder.weight"] = torch.zeros(3)
    path = write("safetensors", state, tmp_path / "w.safetensors")
    model, _ = create_backbone(num_classes=2, **TINY)
    report = load_checkpoint(model, path)
    assert report.missing == ["blocks.1.mlp.fc2.weight"]
    assert report.unexpected == ["decoder.weight"]
    assert "missing (1)" in report.summary() and "unexpected (1)" in report.summary()


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    Payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(UserError, match="weights_only=True"):
        create_backbone(num_classes=2, checkpoint=str(path), **TINY)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("missing", "does not exist"),
        ("wrong_arch", "shares no tensor names"),
        ("wrong_shape", "has shape"),
        ("jax", "JAX"),
        ("suffix", "unknown format"),
    ],
)
def test_bad_checkpoints_give_clear_errors(content: str, message: str, tmp_path: Path) -> None:
    if content == "missing":
        path = tmp_path / "nope.safetensors"
    elif content == "wrong_arch":
        path = write("safetensors", {"layer1.conv.weight": torch.zeros(2)}, tmp_path / "w.safetensors")
    elif content == "wrong_shape":
        path = write("safetensors", {"cls_token": torch.zeros(1, 1, 7)}, tmp_path / "w.safetensors")
    elif content == "jax":
        path = tmp_path / "w.npz"
        np.savez(path, **{"Transformer/encoder_norm/scale": np.zeros(3)})
    else:
        path = tmp_path / "w.onnx"
        path.write_bytes(b"x")
    with pytest.raises(UserError, match=message):
        create_backbone(num_classes=2, checkpoint=str(path), **TINY)
