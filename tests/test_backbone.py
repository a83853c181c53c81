"""Local checkpoints: every format loads, key differences are reported, pickles with code are refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from src.errors import UserError
from src.models.backbone import create_backbone, load_checkpoint
from tests.conftest import TINY


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


def test_a_partial_load_is_refused_listing_the_random_tensors(tmp_path: Path) -> None:
    state = source_state()
    state.pop("blocks.1.mlp.fc2.weight")
    state["aux_head.weight"] = torch.zeros(3)  # an extra that is nothing of the backbone's: reported only
    path = write("safetensors", state, tmp_path / "w.safetensors")
    model, _ = create_backbone(num_classes=2, **TINY)
    with pytest.raises(
        UserError, match=r"1 backbone tensors would stay randomly.*blocks\.1\.mlp\.fc2\.weight"
    ):
        load_checkpoint(model, path)
    report = load_checkpoint(model, path, allow_missing=["blocks.1.mlp.*"])  # accepted on purpose
    assert report.missing == [] and report.allowed_missing == ["blocks.1.mlp.fc2.weight"]
    assert report.unexpected == ["aux_head.weight"]
    assert "allow_missing (1)" in report.summary() and "unexpected (1)" in report.summary()
    out = json.loads(report.write(tmp_path).read_text())
    assert out["allowed_missing"] == ["blocks.1.mlp.fc2.weight"] and out["loaded"] == report.loaded


def test_backbone_tensors_under_other_names_are_refused(tmp_path: Path) -> None:
    state = {f"encoder.{k}" if k.startswith("blocks.") else k: v for k, v in source_state().items()}
    path = write("safetensors", state, tmp_path / "w.safetensors")
    model, _ = create_backbone(num_classes=2, **TINY)
    with pytest.raises(UserError, match=r"look like the backbone's under other names.*encoder\.blocks\.0"):
        load_checkpoint(model, path)


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


def mae_checkpoint(path: Path, grid_px: int = 32) -> dict[str, torch.Tensor]:
    """A tiny MAE pretraining checkpoint as MAE's main_pretrain.py saves it: encoder with its final norm,
    decoder, mask token and decoder position embedding under "model", beside the optimizer state, epoch and
    the argparse Namespace of the run."""
    import argparse

    torch.manual_seed(3)
    encoder, _ = create_backbone(num_classes=0, **{**TINY, "img_size": grid_px})
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    d, tokens = 192, (grid_px // 8) ** 2 + 1
    state |= {
        "mask_token": torch.randn(1, 1, 96),
        "decoder_embed.weight": torch.randn(96, d),
        "decoder_embed.bias": torch.randn(96),
        "decoder_pos_embed": torch.randn(1, tokens, 96),
        "decoder_blocks.0.attn.qkv.weight": torch.randn(288, 96),
        "decoder_norm.weight": torch.ones(96),
        "decoder_pred.weight": torch.randn(8 * 8 * 3, 96),
    }
    args = argparse.Namespace(model="mae_vit_tiny", mask_ratio=0.75, blr=1.5e-4)
    torch.save({"model": state, "optimizer": {"state": {}}, "epoch": 799, "args": args}, path)
    return state


def test_mae_checkpoint_loads_as_mae_fine_tuning_does(tmp_path: Path) -> None:
    state = mae_checkpoint(tmp_path / "mrm.pth")
    kwargs = {**TINY["model_kwargs"], "global_pool": "avg"}
    model, report = create_backbone(
        num_classes=3, **{**TINY, "model_kwargs": kwargs}, checkpoint=str(tmp_path / "mrm.pth")
    )
    own = model.state_dict()
    assert torch.equal(own["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert torch.equal(own["pos_embed"], state["pos_embed"])
    # MAE fine-tuning drops the decoder, the mask token and the encoder norm; fc_norm and the head start fresh.
    assert sorted(report.dropped) == sorted(
        [k for k in state if k.startswith(("decoder", "mask_token"))] + ["norm.bias", "norm.weight"]
    )
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.new) == ["fc_norm.bias", "fc_norm.weight"]  # new by MAE's definition, not an error
    assert torch.equal(own["fc_norm.weight"], torch.ones(192))
    assert "fc_norm" in report.summary() and "dropped" in report.summary()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_mae_checkpoint_into_a_cls_token_backbone_keeps_the_encoder_norm(tmp_path: Path) -> None:
    state = mae_checkpoint(tmp_path / "mae.pth")
    model, report = create_backbone(num_classes=2, **TINY, checkpoint=str(tmp_path / "mae.pth"))
    assert torch.equal(model.state_dict()["norm.weight"], state["norm.weight"])
    assert "norm.weight" not in report.dropped and report.missing == [] and report.unexpected == []


def test_position_embedding_is_resampled_to_a_larger_image(tmp_path: Path) -> None:
    mae_checkpoint(tmp_path / "mae.pth", grid_px=32)  # 4 x 4 patches
    model, report = create_backbone(
        num_classes=2, **{**TINY, "img_size": 64}, checkpoint=str(tmp_path / "mae.pth")
    )
    assert report.resampled == ["pos_embed"] and model.pos_embed.shape == (1, 8 * 8 + 1, 192)


def test_unknown_weights_tag_names_the_available_ones() -> None:
    with pytest.raises(UserError, match=r"backbone\.tag.*augreg_in21k"):
        create_backbone("vit_tiny_patch16_224.in1k_typo", num_classes=2, img_size=32)
