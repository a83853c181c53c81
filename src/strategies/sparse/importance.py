"""Per-weight importance: a task-specific and a task-agnostic estimate, hybridised (SH-PEFT, arXiv 2405.17877).

Task-specific, from the gradients ``g_b`` of the task loss on training batches b = 1..B (new head attached):

* ``grad_abs``  sum_b |g_b|            (GPS, CVPR 2024: gradient magnitude)
* ``fisher``    sum_b g_b^2            (SPT, ICCV 2023: the empirical Fisher / squared-gradient sensitivity)
* ``taylor``    |w * sum_b g_b|        (first-order Taylor estimate of the loss change if w were removed)

Task-agnostic, from the pretrained weight alone: ``magnitude`` |w| (L1) or ``magnitude_l2`` w^2 (L2).

Hybrid, per weight matrix M:  s = mix * t / mean_M(t) + (1 - mix) * a / mean_M(a).
Dividing each term by its mean over the matrix makes both scale-free (a score of 1 = the matrix's average
weight), so the mix is a real weighting and a layer whose gradients are 100x larger does not take the whole
budget; what competes in a global top-k is how much an entry stands out within its own matrix.
``mix = 1`` and ``mix = 0`` give the pure forms (and skip the unused pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice

import torch
from torch import Tensor, nn

TASK_ESTIMATORS = ("grad_abs", "fisher", "taylor")
AGNOSTIC_ESTIMATORS = ("magnitude", "magnitude_l2")
LossFn = Callable[[Tensor, Tensor], Tensor]


def to_device(batch: object, device: torch.device) -> object:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def task_importance(
    model: nn.Module,
    weights: list[Tensor],
    batches: Iterable,
    loss_fn: LossFn,
    estimator: str,
    max_batches: int,
) -> tuple[list[Tensor], int]:
    """(one score tensor per weight, batches used) from the loss gradients over ``max_batches`` batches.

    Only ``weights`` require grad during the pass (every other flag is restored afterwards) and the model
    runs in eval mode, so dropout does not add noise to the estimate.
    """
    device = weights[0].device
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    acc = [torch.zeros_like(w) for w in weights]
    used = 0
    try:
        for p in flags:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        model.eval()
        for images, target in islice(batches, max_batches):
            images, target = to_device(images, device), to_device(target, device)
            grads = torch.autograd.grad(loss_fn(model(images), target), weights)
            for a, g in zip(acc, grads, strict=True):
                if estimator == "grad_abs":
                    a.add_(g.abs())
                elif estimator == "fisher":
                    a.add_(g.square())
                else:  # taylor: the signed sum, scored after the loop
                    a.add_(g)
            used += 1
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    if estimator == "taylor":
        acc = [(w.detach() * a).abs() for w, a in zip(weights, acc, strict=True)]
    return acc, used


def agnostic_importance(weights: list[Tensor], estimator: str) -> list[Tensor]:
    return [w.detach().abs() if estimator == "magnitude" else w.detach().square() for w in weights]


def normalise(score: Tensor) -> Tensor:
    """Score / its mean over the matrix (an all-zero matrix stays zero)."""
    return score / score.mean().clamp_min(torch.finfo(score.dtype).tiny)


def hybrid(task: list[Tensor] | None, agnostic: list[Tensor] | None, mix: float) -> list[Tensor]:
    """mix * norm(task) + (1 - mix) * norm(agnostic), per matrix; a term with weight 0 may be None."""
    parts = [(mix, task), (1.0 - mix, agnostic)]
    used = [(w, scores) for w, scores in parts if w > 0]
    n = len(next(s for _, s in used))
    return [sum(w * normalise(scores[i]) for w, scores in used) for i in range(n)]
