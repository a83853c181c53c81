"""Fold adapter deltas into the frozen weights for zero-overhead inference, and take them out again.

Which layers fold is the strategy's answer (:meth:`~src.strategies.base.Strategy.mergeable`); each such layer
has ``merge()`` / ``unmerge()`` (HF peft's LoRA / DoRA layers, our q/v LoRA, sparse delta and SSF layers).
Unmerging restores a copy of the frozen tensors kept at merge time instead of trusting the layer's own
``W + Δ − Δ``: in floating point that is not ``W``, and across an adapter bank merged in turn the error would
build up in the shared backbone, silently changing every later task's predictions. The copies cover only
the merged layers' own frozen tensors and live only while merged.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch import Tensor, nn

# layer -> [(tensor, its value before merging)]; weak, so a dropped model takes its copies with it.
_KEPT: weakref.WeakKeyDictionary[nn.Module, list[tuple[Tensor, Tensor]]] = weakref.WeakKeyDictionary()


def frozen_tensors(layer: nn.Module) -> list[Tensor]:
    """What a merge may write into: the layer's parameters that do not train, and its buffers."""
    params = [p for p in layer.parameters() if not p.requires_grad]
    return [*params, *layer.buffers()]


@torch.no_grad()
def merge_layers(layers: Iterable[nn.Module]) -> int:
    """Merge each layer in place, keeping a copy of what it overwrites; returns how many were merged."""
    count = 0
    for layer in layers:
        if layer not in _KEPT:
            _KEPT[layer] = [(t, t.detach().clone()) for t in frozen_tensors(layer)]
            layer.merge()
        count += 1
    return count


@torch.no_grad()
def unmerge_layers(layers: Iterable[nn.Module]) -> None:
    """Undo :func:`merge_layers` bit for bit: the layer's own unmerge (its state), then the kept values."""
    for layer in layers:
        kept = _KEPT.pop(layer, None)
        if kept is None:
            continue
        layer.unmerge()
        for tensor, value in kept:
            tensor.copy_(value)


def is_merged(layers: Iterable[nn.Module]) -> bool:
    return any(layer in _KEPT for layer in layers)
