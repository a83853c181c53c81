"""Fold adapter deltas into the frozen weights for zero-overhead inference, and take them out again.

Works on every layer that knows how: HF peft's LoRA / DoRA layers, our q/v LoRA layer and sparse delta layer. Strategies that
train existing tensors (BitFit, linear probe, full) have nothing to merge.
"""

from __future__ import annotations

from torch import nn

from src.strategies.lora_qv import QVLoRALinear
from src.strategies.sparse.delta import SparseLinear


def mergeable(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, (LoraLayer, QVLoRALinear, SparseLinear))]


def merge_adapters(model: nn.Module) -> int:
    """Merge every adapter layer in place; returns how many were merged."""
    layers = mergeable(model)
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_adapters(model: nn.Module) -> None:
    for layer in mergeable(model):
        layer.unmerge()
