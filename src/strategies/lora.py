"""LoRA (Hu et al., 2022, arXiv 2106.09685) and its relatives, injected by Hugging Face peft.

For a frozen Linear ``W`` (d_out x d_in) LoRA learns ``A`` (r x d_in, Kaiming) and ``B`` (d_out x r, zeros):

    h = W x + (alpha / r) * B A dropout(x)

so training starts from the pretrained function and adds ``r * (d_in + d_out)`` weights per target. On
ViT-B/16's fused ``qkv`` (768 -> 2304) that is 3,072 r per block, 36,864 r over 12 blocks: 147,456 at r=4,
MeLo's 0.17 %. ``options`` passes further ``LoraConfig`` fields, e.g. ``use_dora: true`` (DoRA) or
``use_rslora: true``.

``targets="qv"`` adapts only the query and value parts of each fused qkv named by ``target_modules``
(MeLo's and MED-PEFT's placement; see :mod:`src.strategies.lora_qv`) instead of the whole output.
``also_train`` names modules that train whole beside the adapter and the head, e.g. ``[fc_norm]``: MED-PEFT
(Lian et al., 2024) trains the norm after the global average pool with its LoRA.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from src.errors import UserError
from src.strategies.base import Strategy, freeze, unfreeze_head
from src.strategies.lora_qv import QVLoRALinear, inject_qv_lora

TARGET_PARTS = ("qkv", "qv")


@dataclass
class LoRA(Strategy):
    name: str = "lora"
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["qkv"])
    targets: str = "qkv"
    options: dict[str, Any] = field(default_factory=dict)
    also_train: list[str] = field(default_factory=list)

    def apply(self, model: nn.Module) -> nn.Module:
        model = self.inject(model)
        unfreeze_modules(model, list(self.also_train))
        return model

    def inject(self, model: nn.Module) -> nn.Module:
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        names = check_targets(model, targets)
        if self.targets not in TARGET_PARTS:
            raise UserError(f"peft.targets={self.targets!r}: choose {' or '.join(TARGET_PARTS)}.")
        if self.targets == "qv":
            freeze(model)
            model = inject_qv_lora(model, check_fused_qkv(model, names), self.rank, self.alpha, self.dropout)
            unfreeze_head(model)
            return model
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
            bias="none",
            **dict(self.options),
        )
        # inject (not get_peft_model) keeps the timm module tree, so the head and checkpoints keep their names.
        model = inject_adapter_in_model(config, model)
        unfreeze_head(model)
        return model

    def metadata(self) -> dict[str, str]:
        targets = (
            self.target_modules if isinstance(self.target_modules, str) else ",".join(self.target_modules)
        )
        return {
            **super().metadata(),
            "rank": str(self.rank),
            "alpha": str(self.alpha),
            "target_modules": targets,
            "targets": self.targets,
        }

    def no_weight_decay(self) -> list[str]:
        # peft's lora_A / lora_B / lora_magnitude_vector (DoRA), our lora_A_q ... of q/v LoRA
        return ["*lora_*"]

    def mergeable(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules() if isinstance(m, (LoraLayer, QVLoRALinear))]

    @classmethod
    def budget_rank(cls, settings: Mapping[str, Any]) -> Any | None:
        return settings.get("rank")


def unfreeze_modules(model: nn.Module, names: list[str]) -> None:
    """Train every parameter of the modules ``names`` (suffix match); a module without weights (e.g. the
    ``fc_norm`` of a CLS-token ViT, an Identity) adds nothing, a name that matches no module is refused."""
    for target in names:
        found = [m for n, m in model.named_modules() if n and matches(n, [target])]
        if not found:
            raise UserError(
                f"peft.also_train: no module named {target!r} in this backbone; give module names such as "
                "fc_norm or norm (see `print(model)`), or peft.also_train=[] to train the adapter and head only."
            )
        for module in found:
            module.requires_grad_(True)


def matches(name: str, targets: list[str] | str) -> bool:
    """HF peft's matching rule: a string is a full regex, a list entry matches a name or its suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


def check_targets(model: nn.Module, targets: list[str] | str, key: str = "peft.target_modules") -> list[str]:
    """The Linear layers the targets match; refuse none, listing the ones that exist (indices folded)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    found = [n for n in linears if matches(n, targets)]
    if found:
        return found
    folded = sorted({re.sub(r"\.\d+\.", ".N.", n) for n in linears})
    raise UserError(
        f"{key}={targets!r} matches no Linear layer of this backbone. Available Linear names "
        f"(N = block index): {', '.join(folded)}. Give suffixes such as [qkv] or [qkv, attn.proj, mlp.fc1, mlp.fc2] (a bare `proj` also hits patch_embed.proj)."
    )


def check_fused_qkv(model: nn.Module, names: list[str]) -> list[str]:
    """q/v LoRA splits a fused projection in three: every target must map d -> 3d."""
    bad = [n for n in names if model.get_submodule(n).out_features != 3 * model.get_submodule(n).in_features]
    if bad:
        raise UserError(
            f"peft.targets=qv needs fused qkv Linear layers (out = 3 x in), but {', '.join(bad[:3])} are not; "
            "set peft.target_modules=[qkv] or use peft.targets=qkv."
        )
    return names
