"""LoRA (Hu et al., 2022, arXiv 2106.09685) and its relatives, injected by Hugging Face peft.

For a frozen Linear ``W`` (d_out x d_in) LoRA learns ``A`` (r x d_in, Kaiming) and ``B`` (d_out x r, zeros):

    h = W x + (alpha / r) * B A dropout(x)

so training starts from the pretrained function and adds ``r * (d_in + d_out)`` weights per target. On
ViT-B/16's fused ``qkv`` (768 -> 2304) that is 3,072 r per block, 36,864 r over 12 blocks: 147,456 at r=4,
MeLo's 0.17 %. ``options`` passes further ``LoraConfig`` fields, e.g. ``use_dora: true`` (DoRA) or
``use_rslora: true``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from src.errors import UserError
from src.strategies.base import Strategy, unfreeze_head


@dataclass
class LoRA(Strategy):
    name: str = "lora"
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["qkv"])
    options: dict[str, Any] = field(default_factory=dict)

    def apply(self, model: nn.Module) -> nn.Module:
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        check_targets(model, targets)
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
        return {**super().metadata(), "rank": str(self.rank), "alpha": str(self.alpha), "targets": targets}


def matches(name: str, targets: list[str] | str) -> bool:
    """HF peft's matching rule: a string is a full regex, a list entry matches a name or its suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


def check_targets(model: nn.Module, targets: list[str] | str) -> None:
    """Refuse targets that match no Linear layer, listing the ones that exist (block indices folded)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if any(matches(n, targets) for n in linears):
        return
    folded = sorted({re.sub(r"\.\d+\.", ".N.", n) for n in linears})
    raise UserError(
        f"peft.target_modules={targets!r} matches no Linear layer of this backbone. Available Linear names "
        f"(N = block index): {', '.join(folded)}. Give suffixes such as [qkv] or [qkv, attn.proj, mlp.fc1, mlp.fc2] (a bare `proj` also hits patch_embed.proj)."
    )
