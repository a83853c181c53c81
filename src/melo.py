"""MeLo's published LoRA files (the LoRA-ViT layout), read into and written from our q/v LoRA.

A MeLo file is one flat safetensors: ``w_a_{2i}`` / ``w_b_{2i}`` are A (r x d) and B (d x r) of block i's
query, ``w_a_{2i+1}`` / ``w_b_{2i+1}`` those of its value, and ``fc_{d}in_{C}out`` the head weight (C x d);
the head bias is not saved. MeLo scales by the *integer* ``alpha // r``. Loading sets each
:class:`~src.strategies.lora_qv.QVLoRALinear` to exactly that scaling and the head bias to zero, so outputs
equal MeLo's formula; exporting folds our scaling into B so that MeLo's formula reproduces our outputs.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from src.adapter import FORMAT, class_names_json
from src.atomic import atomic_write
from src.errors import UserError
from src.strategies.lora_qv import QVLoRALinear

log = logging.getLogger(__name__)
HEAD_KEY = re.compile(r"fc_(\d+)in_(\d+)out")


def qv_layers(model: nn.Module) -> list[QVLoRALinear]:
    layers = [m for m in model.modules() if isinstance(m, QVLoRALinear)]
    if not layers:
        raise UserError("MeLo files need q/v LoRA: build the model with peft=lora peft.targets=qv.")
    return layers


def load_melo(model: nn.Module, path: str | Path, alpha: int = 4) -> int:
    """Load a MeLo file into a model with q/v LoRA on every block; returns its number of classes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MeLo adapter {path} does not exist.")
    tensors = load_file(str(path))
    layers = qv_layers(model)
    heads = [k for k in tensors if HEAD_KEY.fullmatch(k)]
    expected = {f"w_{ab}_{i:03d}" for ab in "ab" for i in range(2 * len(layers))}
    if len(heads) != 1 or set(tensors) - set(heads) != expected:
        raise UserError(
            f"{path} is not a MeLo LoRA file for a {len(layers)}-block ViT: expected w_a_000..w_a_"
            f"{2 * len(layers) - 1:03d}, w_b_* and one fc_<d>in_<C>out, found {sorted(tensors)[:4]}..."
        )
    rank = tensors["w_a_000"].shape[0]
    head = model.get_classifier()
    if tensors[heads[0]].shape != head.weight.shape:
        raise UserError(
            f"{path}: head {heads[0]} has shape {tuple(tensors[heads[0]].shape)}, the model's head "
            f"{tuple(head.weight.shape)}; set the number of classes and backbone to the adapter's."
        )
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if layer.lora_A_q.weight.shape[0] != rank:
                raise UserError(f"{path} has rank {rank}; build the model with rank={rank}.")
            for part, idx in (("q", 2 * i), ("v", 2 * i + 1)):
                getattr(layer, f"lora_A_{part}").weight.copy_(tensors[f"w_a_{idx:03d}"])
                getattr(layer, f"lora_B_{part}").weight.copy_(tensors[f"w_b_{idx:03d}"])
            layer.scaling = float(alpha // rank)
        head.weight.copy_(tensors[heads[0]])
        head.bias.zero_()
    if alpha // rank == 0:
        log.warning("MeLo scaling alpha // r = %d // %d = 0: this adapter changes nothing", alpha, rank)
    return head.weight.shape[0]


def export_melo(model: nn.Module, path: str | Path, alpha: int = 4) -> None:
    """Write a model's q/v LoRA and head in MeLo's layout (MeLo will scale by ``alpha // r``)."""
    layers = qv_layers(model)
    rank = layers[0].lora_A_q.weight.shape[0]
    melo_scaling = alpha // rank
    if melo_scaling == 0:
        raise UserError(f"alpha={alpha} < rank={rank}: MeLo's integer scaling alpha // r would be 0.")
    head = model.get_classifier()
    if head.bias is not None and head.bias.abs().max() > 0:
        log.warning(
            "MeLo files drop the head bias (max |bias| %.3g); predictions shift by it", head.bias.abs().max()
        )
    out: dict[str, Tensor] = {}
    for i, layer in enumerate(layers):
        fold = layer.scaling / melo_scaling
        for part, idx in (("q", 2 * i), ("v", 2 * i + 1)):
            out[f"w_a_{idx:03d}"] = getattr(layer, f"lora_A_{part}").weight.detach().clone()
            out[f"w_b_{idx:03d}"] = (getattr(layer, f"lora_B_{part}").weight * fold).detach().clone()
    c, d = head.weight.shape
    out[f"fc_{d}in_{c}out"] = head.weight.detach().clone()
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))


def melo_to_adapter(melo_file: str | Path, preset: dict, out: str | Path) -> Path:
    """Convert a MeLo file into our ``adapter.safetensors`` for ``preset`` (backbone config, task,
    class names, rank, alpha), folding MeLo's integer scaling so outputs stay exactly MeLo's."""
    path = Path(melo_file)
    if not path.is_file():
        raise UserError(f"melo.file={path} does not exist; download the MeLo adapter and give its path.")
    tensors = load_file(str(path))
    heads = [k for k in tensors if HEAD_KEY.fullmatch(k)]
    n = len([k for k in tensors if k.startswith("w_a_")])
    if len(heads) != 1 or n == 0 or n % 2:
        raise UserError(f"{path} is not a MeLo LoRA file (w_a_NNN, w_b_NNN, fc_<d>in_<C>out).")
    rank, alpha = int(tensors["w_a_000"].shape[0]), int(preset["alpha"])
    if rank != int(preset["rank"]):
        raise UserError(f"{path} has rank {rank} but the preset says rank {preset['rank']}.")
    classes = list(preset["class_names"])
    if tensors[heads[0]].shape[0] != len(classes):
        raise UserError(
            f"{path}: head {heads[0]} has {tensors[heads[0]].shape[0]} classes, preset {len(classes)}."
        )
    fold = (alpha // rank) / (alpha / rank)  # our layer scales by alpha / r, MeLo by alpha // r
    state: dict[str, Tensor] = {}
    for i in range(n // 2):
        for part, idx in (("q", 2 * i), ("v", 2 * i + 1)):
            state[f"blocks.{i}.attn.qkv.lora_A_{part}.weight"] = tensors[f"w_a_{idx:03d}"]
            state[f"blocks.{i}.attn.qkv.lora_B_{part}.weight"] = tensors[f"w_b_{idx:03d}"] * fold
    state["head.weight"] = tensors[heads[0]]
    state["head.bias"] = torch.zeros(len(classes))  # MeLo saves none
    strategy = {"_target_": "src.strategies.lora.LoRA", "name": "lora", "rank": rank, "alpha": alpha,
                "dropout": 0.0, "target_modules": ["qkv"], "targets": "qv", "options": {}}  # fmt: skip
    backbone = dict(preset["backbone"])
    meta = {
        "format": FORMAT,
        "backbone": backbone["name"],
        "img_size": str(backbone["img_size"]),
        "color": preset.get("color", "gray"),
        "resize": preset.get("resize", "pil"),  # MeLo's 224 px loaders: torchvision on float tensors
        "task": preset["task"],
        "class_names": class_names_json(classes),
        "strategy": "lora",
        "rank": str(rank),
        "alpha": str(alpha),
        "target_modules": "qkv",
        "targets": "qv",
        "backbone_config": json.dumps(backbone),
        "strategy_config": json.dumps(strategy),
        "converted_from": path.name,
    }
    with atomic_write(out) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    return Path(out)
