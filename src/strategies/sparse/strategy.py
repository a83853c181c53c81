"""SH-PEFT-style sparse fine-tuning: train only the most important ~0.01 % of the backbone's weights.

SH-PEFT (arXiv 2405.17877) scores every weight by a hybrid of a task-specific and a task-agnostic importance
(:mod:`.importance`), keeps the top entries (:mod:`.selection`) and trains only those, beside the new head.
Here the chosen entries train as sparse delta parameters (:mod:`.delta`, as SPT, ICCV 2023): values plus
frozen positions, added to the frozen weights by a custom autograd function, so there is no dense weight
gradient and no optimizer state for frozen weights, and every unselected weight stays bit-identical.

``apply`` builds the structure (its size fixed by the budget); ``prepare`` runs the importance pass on
training batches and installs the selection before training. A model rebuilt by ``apply`` alone (eval,
predict, adapter bank) gets its positions from the checkpoint or adapter file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from src.errors import UserError
from src.strategies.base import Strategy, freeze, unfreeze_head
from src.strategies.lora import check_targets
from src.strategies.sparse.delta import SparseDelta, SparseLinear
from src.strategies.sparse.importance import (
    AGNOSTIC_ESTIMATORS,
    TASK_ESTIMATORS,
    LossFn,
    agnostic_importance,
    hybrid,
    task_importance,
)
from src.strategies.sparse.report import heatmap, matrix_counts, metrics_entries
from src.strategies.sparse.selection import SELECTIONS, check_per_neuron, select

log = logging.getLogger(__name__)
IMPORTANCE_DEFAULTS: dict[str, Any] = {"task": "grad_abs", "agnostic": "magnitude", "mix": 0.5, "batches": 16}
DELTA_NAME = "sparse_delta"


def rank_budget(model: nn.Module, rank: int, targets: list[str] | str) -> int:
    """What LoRA trains at ``rank`` on ``targets``: r * (in + out) summed over the matching Linear layers."""
    names = check_targets(model, targets, key="peft.rank_targets")
    return sum(
        rank * (model.get_submodule(n).in_features + model.get_submodule(n).out_features) for n in names
    )


@dataclass
class Sparse(Strategy):
    name: str = "sparse"
    budget: float | str = "rank"
    rank: int = 4
    rank_targets: list[str] | str = field(default_factory=lambda: ["qkv"])
    eligible: list[str] | str = field(default_factory=lambda: ["qkv", "attn.proj", "mlp.fc1", "mlp.fc2"])
    selection: str = "global"
    train_bias: bool = False
    importance: Mapping[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The importance settings with defaults filled in; every bad value is a UserError naming its key."""
        imp = {**IMPORTANCE_DEFAULTS, **dict(self.importance)}
        unknown = set(imp) - set(IMPORTANCE_DEFAULTS)
        if unknown:
            raise UserError(
                f"peft.importance has unknown keys {sorted(unknown)}; it takes {list(IMPORTANCE_DEFAULTS)}."
            )
        for key, options in (("task", TASK_ESTIMATORS), ("agnostic", AGNOSTIC_ESTIMATORS)):
            if imp[key] not in options:
                raise UserError(
                    f"peft.importance.{key}={imp[key]!r} is unknown; choose one of {', '.join(options)}."
                )
        mix, batches = imp["mix"], imp["batches"]
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0.0 <= mix <= 1.0:
            raise UserError(
                f"peft.importance.mix={mix!r} must be a number in [0, 1] (1: task-specific only)."
            )
        if isinstance(batches, bool) or not isinstance(batches, int) or batches <= 0:
            raise UserError(f"peft.importance.batches={batches!r} must be a positive integer.")
        if self.selection not in SELECTIONS:
            raise UserError(
                f"peft.selection={self.selection!r} is unknown; choose one of {', '.join(SELECTIONS)}."
            )
        return imp

    def budget_count(self, model: nn.Module, eligible_total: int) -> int:
        """Entries to train: LoRA's count at ``rank`` for ``budget=rank``, else the fraction of the eligible."""
        if self.budget == "rank":
            k = rank_budget(model, self.rank, self.rank_targets)
        elif (
            isinstance(self.budget, (int, float))
            and not isinstance(self.budget, bool)
            and 0 < self.budget < 1
        ):
            k = round(self.budget * eligible_total)
        else:
            raise UserError(
                f"peft.budget={self.budget!r}: give a fraction of the eligible weights in (0, 1), e.g. 0.0001 "
                "(SH-PEFT's 0.01 %), or `rank` for exactly what LoRA trains at the top-level `rank`."
            )
        if not 0 < k <= eligible_total:
            raise UserError(
                f"peft.budget={self.budget!r} gives {k:,} entries, but the eligible matrices hold "
                f"{eligible_total:,}; raise peft.budget or widen peft.eligible."
            )
        return k

    def apply(self, model: nn.Module) -> nn.Module:
        self.settings()
        names = check_targets(model, self.eligible, key="peft.eligible")
        head = {id(p) for p in model.get_classifier().parameters()}
        names = [n for n in names if id(model.get_submodule(n).weight) not in head]
        bases = [model.get_submodule(n) for n in names]
        k = self.budget_count(model, sum(b.weight.numel() for b in bases))
        if self.selection == "per_neuron":
            check_per_neuron([tuple(b.weight.shape) for b in bases], k)
        freeze(model)
        delta = SparseDelta([tuple(b.weight.shape) for b in bases], k)
        for slot, (name, base) in enumerate(zip(names, bases, strict=True)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, SparseLinear(base, delta, slot))
            if self.train_bias and base.bias is not None:
                base.bias.requires_grad_(True)
        setattr(model, DELTA_NAME, delta)
        unfreeze_head(model)
        return model

    def prepare(self, model: nn.Module, batches: Iterable, loss_fn: LossFn, device: str = "cpu") -> None:
        """Score the eligible weights on up to ``importance.batches`` training batches and select the budget."""
        imp = self.settings()
        layers = sparse_layers(model)
        delta: SparseDelta = getattr(model, DELTA_NAME)
        home = next(model.parameters()).device
        model.to(device)
        weights = [layer.base.weight for layer in layers.values()]
        task = agnostic = None
        if imp["mix"] > 0:
            task, used = task_importance(model, weights, batches, loss_fn, imp["task"], imp["batches"])
            if used == 0:
                raise UserError("the training split yields no batch for the peft=sparse importance pass.")
            log.info("sparse importance: %s over %d batches", imp["task"], used)
        if imp["mix"] < 1:
            agnostic = agnostic_importance(weights, imp["agnostic"])
        delta.set_selection(select(hybrid(task, agnostic, imp["mix"]), delta.values.numel(), self.selection))
        model.to(home)

    def metadata(self) -> dict[str, str]:
        eligible = self.eligible if isinstance(self.eligible, str) else ",".join(self.eligible)
        return {
            **super().metadata(),
            "budget": str(self.budget),
            "selection": self.selection,
            # which matrices the flat positions index: two adapters with other eligible lists do not mix
            "eligible": eligible,
        }

    def structure_keys(self) -> tuple[str, ...]:
        # The selection method only chose the positions, which every adapter file carries itself.
        return ("strategy", "budget", "eligible")

    def no_weight_decay(self) -> list[str]:
        return [f"{DELTA_NAME}.*"]

    def mergeable(self, model: nn.Module) -> list[nn.Module]:
        return list(sparse_layers(model).values())

    @classmethod
    def budget_rank(cls, settings: Mapping[str, Any]) -> Any | None:
        # Only the rank-matched budget is set by the rank; a fraction (SH-PEFT's 0.0001) is not.
        return settings.get("rank") if str(settings.get("budget", "rank")) == "rank" else None

    @classmethod
    def label(cls, settings: Mapping[str, Any]) -> str:
        if cls.budget_rank(settings) is not None:
            return super().label(settings)
        return f"{settings.get('name') or cls.name} {100 * float(settings['budget']):g}%"

    def report(self, model: nn.Module, out: Path) -> tuple[dict[str, Any], list[Path]]:
        counts = matrix_counts(sparse_layers(model))
        total = sum(counts.values())
        title = f"peft=sparse: {total:,} selected weights ({self.selection}, budget {self.budget})"
        path = heatmap(counts, out / "figures" / "sparse_budget.png", title)  # beside the test figures
        return {"sparse/selected_total": total, **metrics_entries(counts)}, [path]


def sparse_layers(model: nn.Module) -> dict[str, SparseLinear]:
    """The adapted layers by name, in slot order."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    return dict(sorted(found.items(), key=lambda item: item[1].slot))
