"""An adapter bank: many task adapters over one frozen backbone in memory (MeLo's task plug-ins).

Every adapter file of the bank must come from the same backbone and strategy structure (the metadata keys
the strategy names in ``structure_keys``, e.g. LoRA's rank, alpha and targets); the class count may differ
per task. ``switch(name)`` points the model's adapted parameters at that task's tensors and swaps in its
head: no copy of the backbone, no rebuild, no file read. ``switch(name, merge=True)`` also folds the adapter
into the frozen weights (plain-backbone inference cost); the next switch first restores the frozen weights
bit for bit (:mod:`src.merge`), so the shared backbone never drifts however many tasks take turns. Meant
for inference: training after a switch would write into the bank's stored tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from src.adapter import read_adapter
from src.errors import UserError
from src.models.backbone import head_parameter_prefixes
from src.strategies.base import Strategy

# Metadata of every adapter that fixes the model its tensors plug into; the strategy adds its own keys.
BACKBONE_KEYS = ("backbone", "img_size")


@dataclass
class TaskAdapter:
    name: str
    metadata: dict[str, str]
    tensors: dict[str, Tensor]
    head: nn.Module

    @property
    def class_names(self) -> list[str]:
        return json.loads(self.metadata["class_names"])


class AdapterBank:
    def __init__(self, model: nn.Module, strategy: Strategy) -> None:
        """``model``: built by ``strategy.apply`` (the structure every adapter of the bank must share)."""
        self.model = model.eval()
        self.strategy = strategy
        self.structure = (*BACKBONE_KEYS, *strategy.structure_keys())
        self.merged = False
        self.head_prefix = head_parameter_prefixes(model)[0]
        self.head_name = self.head_prefix.rstrip(".")
        # Buffers too: an adapter may carry some (e.g. the positions of sparse delta values).
        tensors = [*model.named_parameters(), *model.named_buffers()]
        self.params = {n: p for n, p in tensors if not n.startswith(self.head_prefix)}
        self.adapters: dict[str, TaskAdapter] = {}
        self.active: str | None = None

    def add(self, name: str, path: str | Path) -> TaskAdapter:
        """Read one adapter file into memory after checking it fits the bank's model."""
        meta, tensors = read_adapter(path)
        if self.adapters:
            first = next(iter(self.adapters.values()))
            wrong = [k for k in self.structure if meta.get(k) != first.metadata.get(k)]
            if wrong:
                detail = ", ".join(f"{k} {meta.get(k)!r} vs {first.metadata.get(k)!r}" for k in wrong)
                raise UserError(f"adapter {path} does not fit the bank (first: {first.name}): {detail}.")
        head_state = {
            k[len(self.head_prefix) :]: v for k, v in tensors.items() if k.startswith(self.head_prefix)
        }
        body = {k: v for k, v in tensors.items() if not k.startswith(self.head_prefix)}
        bad = [k for k, v in body.items() if k not in self.params or self.params[k].shape != v.shape]
        if bad or "weight" not in head_state:
            raise UserError(
                f"adapter {path} does not match the bank's model (e.g. {bad[:3] or 'no head'}): "
                "it was trained with another backbone, strategy or rank."
            )
        weight = head_state["weight"]
        classes = json.loads(meta.get("class_names", "[]"))
        if len(classes) != weight.shape[0]:
            raise UserError(
                f"adapter {path} names {len(classes)} classes ({', '.join(classes)}) but its head has "
                f"{weight.shape[0]} outputs; the file was edited or mixed from two runs. Re-export it from "
                "its run."
            )
        head = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in head_state)
        head.load_state_dict(head_state)
        adapter = TaskAdapter(name, meta, body, head.eval().requires_grad_(False))
        self.adapters[name] = adapter
        return adapter

    def switch(self, name: str, merge: bool = False) -> TaskAdapter:
        """Make ``name`` the active task: O(number of adapted tensors) pointer swaps, no copies; with
        ``merge`` its adapter is then folded into the frozen weights (where the strategy can)."""
        if name not in self.adapters:
            raise UserError(f"no adapter {name!r} in the bank; it holds {', '.join(self.adapters)}.")
        adapter = self.adapters[name]
        if self.merged:  # restore the frozen weights exactly before another task's tensors come in
            self.strategy.unmerge(self.model)
            self.merged = False
        for key, tensor in adapter.tensors.items():
            self.params[key].data = tensor
        parent, _, child = self.head_name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, adapter.head)
        self.active = name
        if merge:
            self.merged = self.strategy.merge(self.model) > 0
        return adapter
