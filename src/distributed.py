"""What every DDP process must agree on: evaluation outputs in dataset order, and a prepared model's state.

Lightning gives each process of a val / test run a ``DistributedSampler(shuffle=False)`` shard: process r
of W scores samples r, r + W, r + 2W, ... of the index list padded (with its first entries) to a multiple
of W. Gathering the shards and reading them column by column restores that list; cutting it at the
dataset's length drops the padding, so every sample is scored exactly once.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler


def gather_in_dataset_order(module: L.LightningModule, parts: list[Tensor], loader: object) -> list[Tensor]:
    """Concatenated per-process outputs (same first dimension each) -> all samples, dataset order, once."""
    if module.trainer.world_size == 1:
        return parts
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.shuffle:
        raise RuntimeError(
            "DDP evaluation needs Lightning's unshuffled DistributedSampler (trainer.use_distributed_sampler="
            f"true); got {type(sampler).__name__}, so samples could not be put back in order."
        )
    out = []
    for t in parts:
        gathered = module.all_gather(t)  # (W, n, ...): [r, j] is entry r + j * W of the padded list
        ordered = gathered.transpose(0, 1).flatten(0, 1)
        out.append(ordered[: len(sampler.dataset)])
    return out


def broadcast_prepared_state(trainer: L.Trainer, model: nn.Module) -> None:
    """Give every process rank 0's buffers and trainable tensors: what a strategy's prepare pass may set
    (e.g. peft=sparse's positions). Frozen weights are the pretrained ones on every rank already."""
    if trainer.world_size == 1:
        return
    state = {
        name: t.detach().cpu()
        for name, t in [
            *model.named_buffers(),
            *((n, p) for n, p in model.named_parameters() if p.requires_grad),
        ]
    }
    state = trainer.strategy.broadcast(state, src=0)
    with torch.no_grad():
        for name, t in [*model.named_buffers(), *model.named_parameters()]:
            if name in state:
                t.copy_(state[name].to(t.device))
