"""Config plumbing shared by the entry points: resolvers, validation, flattening."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# conf/paths/default.yaml anchors outputs/ and data/ here, so runs land in the repository whatever the cwd.
os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))


def auto_precision() -> str:
    """bf16 mixed precision where the GPU supports it, full fp32 elsewhere (CPU autocast is slower)."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def register_resolvers() -> None:
    """Register the OmegaConf resolvers our YAML uses; safe to call more than once."""
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)


register_resolvers()


def validate_config(cfg: DictConfig) -> None:
    """Cheap checks of user-facing knobs, run before any model or data is built."""
    rank = cfg.get("rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise UserError(
            f"rank={rank!r} is not a positive integer. `rank` sets the LoRA rank (and the budget of "
            "rank-matched strategies); pass e.g. `rank=4` or sweep `-m rank=1,2,4,8,16`."
        )
    last = (cfg.get("callbacks") or {}).get("last_checkpoint") or {}
    every = last.get("every_n_train_steps", 0)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise UserError(
            f"callbacks.last_checkpoint.every_n_train_steps={every!r} must be a whole number >= 0 "
            "(0: last.ckpt only at the end of each epoch and on SIGTERM)."
        )
    size = cfg.backbone.get("img_size")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise UserError(f"backbone.img_size={size!r} must be a positive integer number of pixels.")


def flatten(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config to dotted keys with string values (lists kept whole, as YAML flow text)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple, ListConfig)):
            out[name] = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            out[name] = str(value)
    return out
