"""Optimizers, layer-wise lr decay and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from src.errors import UserError

OPTIMIZERS = ("adamw", "adam", "sgd")
# Parameters before the first transformer block: layer 0 under layer-wise lr decay.
EMBEDDING_NAMES = ("cls_token", "reg_token", "dist_token", "pos_embed", "patch_embed", "norm_pre")
BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def no_weight_decay(name: str, p: nn.Parameter) -> bool:
    """Biases, norms and embeddings take no weight decay (timm's and MAE's convention)."""
    return p.ndim <= 1 or name.endswith((".cls_token", ".pos_embed", "cls_token", "pos_embed"))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only, split into weight-decayed and not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if no_weight_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def layer_id(name: str, num_blocks: int) -> int:
    """Depth of a ViT parameter: embeddings 0, ``blocks.i`` i + 1, everything after the blocks L + 1.

    As MAE's ``get_layer_id_for_vit``; adapter weights injected into a block (``blocks.3.attn.qkv.lora_A...``)
    take their block's depth.
    """
    match = BLOCK_INDEX.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if name.split(".")[0] in EMBEDDING_NAMES else num_blocks + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, lr: float, decay: float) -> list[dict]:
    """Layer-wise lr decay (Clark et al., 2020; BEiT / MAE fine-tuning): lr x decay^(L + 1 - layer).

    The head and final norms train at ``lr``, block i at ``lr * decay^(L - i)``, the embeddings at
    ``lr * decay^(L + 1)``. Groups come deepest first, so ``param_groups[0]`` holds the undecayed lr.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not 0 < decay <= 1:
        raise UserError(
            f"optim.layer_decay={decay} needs a ViT-like backbone with `blocks` and a value in (0, 1] "
            "(0.65 to 0.75 in MAE fine-tuning); set optim.layer_decay=null to turn it off."
        )
    num_blocks = len(blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, skip = layer_id(name, num_blocks), no_weight_decay(name, p)
        scale = decay ** (num_blocks + 1 - layer)
        group = groups.setdefault(
            (layer, skip),
            {
                "params": [],
                "weight_decay": 0.0 if skip else weight_decay,
                "lr": lr * scale,
                "lr_scale": scale,
            },
        )
        group["params"].append(p)
    return sorted(groups.values(), key=lambda g: -g["lr_scale"])


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: Iterable[float] = (0.9, 0.999),
    layer_decay: float | None = None,
) -> Optimizer:
    """The optimizer over the model's trainable parameters; frozen weights get no state at all.

    ``layer_decay`` (e.g. 0.65) gives each transformer block its own lr, see :func:`layer_decay_groups`.
    """
    if layer_decay is None:
        groups = param_groups(model, weight_decay)
    else:
        groups = layer_decay_groups(model, weight_decay, lr, layer_decay)
    if not groups:
        raise UserError("the model has no trainable parameters: check the `peft` strategy's settings.")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise UserError(f"optim.name={name!r} is unknown; choose one of {', '.join(OPTIMIZERS)}.")


def warmup_steps(total_steps: int, max_epochs: int, fraction: float, epochs: float | None = None) -> int:
    """Warm-up length in optimizer steps: ``epochs`` of ``max_epochs`` if given (MAE's 5), else ``fraction``."""
    if epochs is None:
        return round(fraction * total_steps)
    if max_epochs is None or max_epochs <= 0:
        raise UserError("optim.warmup_epochs needs trainer.max_epochs; use optim.warmup_fraction instead.")
    return round(total_steps * min(epochs / max_epochs, 1.0))


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int, min_lr: float) -> LambdaLR:
    """Linear warm-up from ~0 to the base lr, then half-cosine down to ``min_lr`` at ``total_steps``.

    Every param group follows the same curve relative to its own lr, so layer-decayed groups end at
    ``min_lr`` times their scale, as in MAE.
    """
    base = optimizer.defaults["lr"]
    floor = min(min_lr / base, 1.0) if base > 0 else 0.0
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
