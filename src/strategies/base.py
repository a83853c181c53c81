"""The strategy interface and the freezing helpers the strategies share.

Everything that depends on a particular strategy asks it through these hooks, so a new strategy is one module
plus one YAML: which weights train (``apply``), a look at the data before training (``prepare``), what an
adapter file records (``metadata``) and which of it fixes the model's structure (``structure_keys``, for the
adapter bank), which added parameters take no weight decay (``no_weight_decay``, see :mod:`src.optim`),
which layers fold into the frozen weights (``mergeable``, with ``merge`` / ``unmerge``, see :mod:`src.merge`),
its column in tables (``label``, ``budget_rank``) and its own report files (``report``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from torch import Tensor, nn

from src.errors import UserError
from src.merge import merge_layers, unmerge_layers

PACKAGE = "src.strategies."


@dataclass
class Strategy(ABC):
    """Makes a freshly built classifier trainable in one particular way.

    ``apply`` may wrap or inject modules but must leave ``model(x)`` returning logits. Whatever it leaves
    with ``requires_grad=True`` is what the optimizer sees and what ``adapter.safetensors`` stores.
    """

    name: str = "strategy"

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze / adapt ``model`` in place and return the module to train."""

    def prepare(  # noqa: B027 (an optional hook: most strategies need nothing before training)
        self,
        model: nn.Module,
        batches: Iterable,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        device: str = "cpu",
    ) -> None:
        """Before training, with the new head attached: look at training batches (``(images, target)``)
        and the task loss, e.g. to choose which weights train. Runs on ``device``, leaves the model where
        it was."""

    def metadata(self) -> dict[str, str]:
        """What an adapter file must record to be re-applied later (``rank`` only where it matters)."""
        return {"strategy": self.name}

    def structure_keys(self) -> tuple[str, ...]:
        """The :meth:`metadata` keys that must agree for two adapters to plug into one model (an adapter
        bank); by default all of them."""
        return tuple(self.metadata())

    def no_weight_decay(self) -> list[str]:
        """fnmatch patterns of the parameters this strategy adds to the backbone: adapter parameters take no
        weight decay (the rule of :mod:`src.optim`). Strategies that only train existing tensors add none."""
        return []

    def mergeable(self, model: nn.Module) -> list[nn.Module]:
        """The layers that can fold their adapter into the frozen weights (each with ``merge()`` and
        ``unmerge()``); none for strategies that train existing tensors."""
        return []

    def merge(self, model: nn.Module) -> int:
        """Fold the adapter into the frozen weights for plain-backbone inference cost; returns the number of
        layers merged. :meth:`unmerge` restores the frozen weights bit for bit (:mod:`src.merge`)."""
        return merge_layers(self.mergeable(model))

    def unmerge(self, model: nn.Module) -> None:
        unmerge_layers(self.mergeable(model))

    @classmethod
    def budget_rank(cls, settings: Mapping[str, Any]) -> Any | None:
        """The rank that sets this strategy's size, from its config (``peft.*``), or None where no rank
        plays a part; a sweep records it and tables name it."""
        return None

    @classmethod
    def label(cls, settings: Mapping[str, Any]) -> str:
        """Its column in result tables, from its config (``peft.*``): the name, plus the rank where
        :meth:`budget_rank` gives one (``lora r4``)."""
        name = settings.get("name") or cls.name
        rank = cls.budget_rank(settings)
        return f"{name} r{rank}" if rank is not None else str(name)

    def report(self, model: nn.Module, out: Path) -> tuple[dict[str, Any], list[Path]]:
        """After training: entries for metrics.json and files written under ``out`` to log as artifacts."""
        return {}, []


def strategy_class(target: str | None) -> type[Strategy]:
    """The class a config's ``peft._target_`` names; only our strategies, never an arbitrary callable from a
    file (an adapter's ``strategy_config``, an MLflow param)."""
    if not str(target or "").startswith(PACKAGE):
        raise UserError(f"peft._target_={target!r} is not a medpeft strategy (they live in {PACKAGE}*).")
    cls = get_class(str(target))
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise UserError(f"peft._target_={target!r} is not a Strategy.")
    return cls


def table_label(settings: Mapping[str, Any]) -> str:
    """A run's strategy column from its ``peft.*`` settings, as its strategy labels itself (the bare name
    for a run whose ``_target_`` is not one of ours)."""
    try:
        return strategy_class(settings.get("_target_")).label(settings)
    except (UserError, ImportError, AttributeError):
        return str(settings.get("name") or "?")


def settings_rank(settings: Mapping[str, Any]) -> Any | None:
    """The rank that sizes the strategy of these ``peft.*`` settings, or None (see ``budget_rank``)."""
    try:
        return strategy_class(settings.get("_target_")).budget_rank(settings)
    except (UserError, ImportError, AttributeError):
        return None


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze_head(model: nn.Module) -> None:
    """The new classification head always trains: it starts from random weights."""
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
