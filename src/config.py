"""Config plumbing shared by the entry points: the project root, resolvers, validation, flattening.

Importing this module changes nothing global: whoever composes ``conf/`` registers the resolvers first
(:func:`hydra_entry` for the entry points, ``tests/conftest.py``, :func:`src.resume.new_run_dir`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError

from src.data.medpeft_lists import check_medpeft_splits
from src.errors import UserError
from src.models.timm_names import timm_name, timm_norm
from src.recipes import linear_scaled_lr, when_null

# The repository this package sits in, found from the package itself (never from the environment, where
# another tool's PROJECT_ROOT could silently move every run). conf/paths/default.yaml anchors outputs/ and
# data/ here through ${project_root:}, so runs land in the repository whatever the cwd.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


def auto_precision() -> str:
    """bf16 mixed precision where the GPU supports it, full fp32 elsewhere (CPU autocast is slower)."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def register_resolvers() -> None:
    """Register the OmegaConf resolvers our YAML uses; safe to call more than once."""
    resolvers = {
        "project_root": lambda: str(PROJECT_ROOT),
        "auto_precision": auto_precision,
        "timm_name": timm_name,
        # a ListConfig, not a list: OmegaConf.resolve cannot store a resolver's plain list
        "timm_norm": lambda which, name: ListConfig(timm_norm(which, name)),
        "linear_scaled_lr": linear_scaled_lr,
        "when_null": when_null,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def hydra_entry(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``hydra.main`` over ``conf/`` with the resolvers registered first, at the entry point's definition:
    Hydra composes, and its launchers' workers (joblib, SLURM) resolve the run dirs, before the task runs."""
    register_resolvers()
    return hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)


def validate_config(cfg: DictConfig) -> None:
    """Cheap checks of user-facing knobs, run before any model or data is built."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationKeyError as err:
        # e.g. a paper recipe's per-dataset table looked up with a dataset it does not cover
        raise UserError(
            f"config key {err.full_key} does not resolve: {err.msg.splitlines()[0]}. A paper recipe "
            "(experiment=...) covers only the datasets / settings in its tables; choose one of those."
        ) from None
    b = cfg.backbone
    if b.get("require_weights") and not b.get("pretrained") and not b.get("checkpoint"):
        raise UserError(
            f"this recipe fine-tunes pretrained weights, but {b.name} would start from random ones: pass "
            "backbone.pretrained=true (downloads timm's weights from the Hugging Face hub) or "
            "backbone.checkpoint=PATH (a local .safetensors / .pth / .npz)."
        )
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
    check_medpeft_splits(cfg)


def instantiate_user(node: DictConfig) -> Any:
    """Hydra's ``instantiate``, but a :class:`UserError` raised by the target's constructor (a bad
    ``dataset.name``, ``dataset.fold``...) comes out as itself, so the entry points print it as one line
    instead of Hydra's wrapped "Error in call to target" report."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


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
