"""Optimizers (Hydra ``_partial_`` targets), their parameter groups and the warm-up + cosine schedule.

Parameter groups come from timm's own helpers (``param_groups_weight_decay``, ``param_groups_layer_decay``),
with one weight-decay rule for every strategy:

* weight decay applies only to the trainable matrices the model already had: the new head's weight, and the
  backbone's weights under full fine-tuning;
* exempt: 1-D tensors and biases (norms, BitFit), the names the backbone's ``no_weight_decay()`` gives
  (``pos_embed``, ``cls_token``: timm's and MAE's convention), and every **adapter parameter** a strategy adds,
  named by its :meth:`~src.strategies.base.Strategy.no_weight_decay` patterns (LoRA / DoRA ``A``, ``B`` and
  magnitudes, sparse ``values``, SSF ``scale`` / ``shift``).

Why adapters are exempt: decay pulls a parameter towards zero, which means something different in every
parametrisation (LoRA's update ``B A`` shrinks quadratically, a sparse delta linearly, an SSF scale towards
zero would switch features off), so decaying them would make strategy comparisons depend on the
parametrisation rather than on the budget. Before this rule LoRA's ``A`` / ``B`` took 0.05 and sparse values
(1-D) took 0, which biased the LoRA-vs-sparse comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from src.errors import UserError

OptimizerFactory = Callable[..., Optimizer]


def exempt_names(model: nn.Module, adapter_patterns: Iterable[str] = ()) -> list[str]:
    """The ``no_weight_decay_list`` for timm's helpers: the backbone's own exemptions (exact names, for
    timm models ``pos_embed`` / ``cls_token`` ...) plus the strategy's adapter patterns (fnmatch)."""
    own = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return sorted({*own, *adapter_patterns})


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    no_weight_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Trainable parameters only, grouped by timm: weight decay per the module's rule, and with
    ``layer_decay`` an lr of ``lr * decay^(L + 1 - layer)`` per depth (Clark et al., 2020; BEiT / MAE
    fine-tuning: head and final norm at ``lr``, block i at ``lr * decay^(L - i)``, embeddings at
    ``lr * decay^(L + 1)``; adapter weights inside a block take their block's depth, parameters outside
    every block, such as the flat sparse delta, the top lr). Groups come deepest (largest lr) first."""
    exempt = exempt_names(model, no_weight_decay)
    if layer_decay is None:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=exempt)
        return [{**g, "name": "decay" if g["weight_decay"] else "no_decay"} for g in groups]
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not 0 < layer_decay <= 1:
        raise UserError(
            f"optim.layer_decay={layer_decay} needs a ViT-like backbone with `blocks` and a value in (0, 1] "
            "(0.65 to 0.75 in MAE fine-tuning); set optim.layer_decay=null to turn it off."
        )
    groups = param_groups_layer_decay(
        model, weight_decay, no_weight_decay_list=exempt, layer_decay=layer_decay
    )
    for group in groups:  # timm's schedulers read lr_scale; torch's LambdaLR scales each group's own lr
        group["lr"] = lr * group["lr_scale"]
        # The per-group name LearningRateMonitor logs under (lr-AdamW/x0.116_decay)
        group["name"] = f"x{group['lr_scale']:.3g}_{'decay' if group['weight_decay'] else 'no_decay'}"
    return sorted(groups, key=lambda g: -g["lr_scale"])


def optimizer_factory(optimizer: OptimizerFactory | Mapping[str, Any]) -> OptimizerFactory:
    """``optim.optimizer`` as a callable ``(params, lr=..., weight_decay=...) -> Optimizer``: a Hydra node
    with ``_target_`` and ``_partial_: true`` (e.g. ``torch.optim.AdamW``) or the partial itself."""
    if callable(optimizer):
        return optimizer
    target = optimizer.get("_target_") if isinstance(optimizer, Mapping) else None
    if target is None or not optimizer.get("_partial_"):
        raise UserError(
            f"optim.optimizer={optimizer!r} must be a Hydra node with _target_ (e.g. torch.optim.AdamW) and "
            "_partial_: true; see conf/optim/adamw.yaml."
        )
    try:
        return instantiate(optimizer)
    except InstantiationException as err:
        raise UserError(
            f"optim.optimizer._target_={target!r} cannot be built ({str(err).splitlines()[0]}); give an "
            "importable optimizer class such as torch.optim.AdamW, torch.optim.SGD or timm.optim.Lamb."
        ) from None


def build_optimizer(
    model: nn.Module,
    optimizer: OptimizerFactory | Mapping[str, Any],
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    layer_decay: float | None = None,
    no_weight_decay: Iterable[str] = (),
) -> Optimizer:
    """The optimizer over the model's trainable parameters; frozen weights get no state at all.

    ``no_weight_decay``: fnmatch patterns of the strategy's adapter parameters (see the module docstring).
    """
    groups = param_groups(model, lr, weight_decay, layer_decay, no_weight_decay)
    if not any(g["params"] for g in groups):
        raise UserError("the model has no trainable parameters: check the `peft` strategy's settings.")
    factory = optimizer_factory(optimizer)
    try:
        return factory(groups, lr=lr, weight_decay=weight_decay)
    except TypeError as err:
        raise UserError(f"optim.optimizer does not accept its settings: {err}.") from None


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
