"""Optimizers and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from src.errors import UserError

OPTIMIZERS = ("adamw", "adam", "sgd")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only, with no weight decay on biases, norms and embeddings (timm's convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith((".cls_token", ".pos_embed", "cls_token", "pos_embed"))
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: Iterable[float] = (0.9, 0.999),
) -> Optimizer:
    """The optimizer over the model's trainable parameters; frozen weights get no state at all."""
    groups = param_groups(model, weight_decay)
    if not groups:
        raise UserError("the model has no trainable parameters: check the `peft` strategy's settings.")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise UserError(f"optim.name={name!r} is unknown; choose one of {', '.join(OPTIMIZERS)}.")


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int, min_lr: float) -> LambdaLR:
    """Linear warm-up from ~0 to the base lr, then half-cosine down to ``min_lr`` at ``total_steps``."""
    base = optimizer.param_groups[0]["lr"]
    floor = min(min_lr / base, 1.0) if base > 0 else 0.0
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
