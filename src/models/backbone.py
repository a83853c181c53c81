"""timm backbones with a fresh classification head, and local checkpoint loading.

Weights come from the hub only with ``backbone.pretrained=true``; otherwise from ``backbone.checkpoint``
(safetensors, ``.pth`` read with ``weights_only=True``, or ``.npz``) or stay randomly initialised.

MAE-format checkpoints (He et al., 2022; MED-PEFT's MRM and CXR-MAE foundation models) load as MAE's own
fine-tuning script loads them: the decoder and the mask token are pretraining-only and dropped, and when the
backbone pools by global average with ``fc_norm`` (timm ``global_pool=avg``) the pretraining encoder ``norm``
is dropped too, so ``fc_norm`` starts fresh. A position embedding made for another image size is resampled.

lukemelas PyTorch-Pretrained-ViT files (``B_16_imagenet1k.pth``, MeLo's 384 px NIH / INbreast backbone) are
converted to timm's names (:mod:`src.models.lukemelas`).

No silent partial loads: a checkpoint that leaves any backbone tensor at its random init is refused with the
list of those tensors (the new head and the keys the format documents as new, MAE's ``fc_norm``, excepted;
``backbone.allow_missing=[glob, ...]`` accepts more on purpose), and so is a checkpoint tensor that the model
does not use but that looks like one of its own under another name (same final ``<module>.<param>`` name or
the shape of a tensor left missing): that is a checkpoint of another naming scheme, not an extra.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import Tensor, nn

from src.atomic import atomic_write
from src.errors import UserError
from src.models.lukemelas import is_lukemelas, lukemelas_to_timm

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Wrappers used by common training scripts (MAE, DeiT, Lightning) around the state dict.
STATE_DICT_KEYS = ("state_dict", "model", "module", "teacher")
# Keys of an MAE pretraining checkpoint that no classifier uses.
MAE_PRETRAINING_ONLY = ("decoder", "mask_token")


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into a backbone."""

    path: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    allowed_missing: list[str] = field(default_factory=list)
    converted_from: str | None = None

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.path}"]
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("old head dropped", self.skipped_head),
            ("pretraining-only (MAE decoder / mask token / norm before fc_norm) dropped", self.dropped),
            ("resampled to the image size", self.resampled),
            ("new by the format's definition (MAE fc_norm), fresh", self.new),
            ("left random, accepted by backbone.allow_missing", self.allowed_missing),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")
                parts.append(f"{label} ({len(keys)}): {shown}")
        if self.converted_from:
            parts.append(f"converted from the {self.converted_from} layout")
        return "; ".join(parts)

    def write(self, out: Path) -> Path:
        """``backbone_load.json`` in the run dir (logged to MLflow with the run's other files)."""
        path = Path(out) / "backbone_load.json"
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps({**self.__dict__, "summary": self.summary()}, indent=2) + "\n")
        return path

    def metrics(self) -> dict[str, int]:
        """Counts for metrics.json: how many tensors came from the file and how many stayed fresh."""
        return {
            "backbone/loaded_tensors": self.loaded,
            "backbone/missing_tensors": len(self.missing) + len(self.allowed_missing) + len(self.new),
            "backbone/unexpected_tensors": len(self.unexpected),
        }


# The load report of each model built by src.train.build_model, for the run dir and MLflow (weak: never keeps
# a model alive).
LOAD_REPORTS: weakref.WeakKeyDictionary[nn.Module, LoadReport] = weakref.WeakKeyDictionary()


def remember_load_report(model: nn.Module, report: LoadReport | None) -> None:
    if report is not None:
        LOAD_REPORTS[model] = report


def load_report_entries(model: nn.Module) -> dict[str, int]:
    """metrics.json entries of ``model``'s backbone load (none when no checkpoint was read)."""
    report = LOAD_REPORTS.get(model)
    return report.metrics() if report is not None else {}


def load_report_files(model: nn.Module, out: Path) -> list[Path]:
    """``backbone_load.json`` written into ``out`` when ``model``'s backbone came from a checkpoint."""
    report = LOAD_REPORTS.get(model)
    return [report.write(out)] if report is not None else []


def create_backbone(
    name: str,
    num_classes: int,
    img_size: int | None = None,
    pretrained: bool = False,
    checkpoint: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    allow_missing: Sequence[str] | None = None,
    head_init_std: float | None = None,
) -> tuple[nn.Module, LoadReport | None]:
    """A timm model with a new ``num_classes`` head, optionally loaded from a local checkpoint.

    A local ``checkpoint`` wins over ``pretrained``: the hub is never contacted when a file is given (so a
    preset that says ``pretrained: true`` runs offline with ``backbone.checkpoint=PATH``)."""
    if checkpoint:
        pretrained = False
    kwargs = dict(model_kwargs or {})
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UserError(
                f"backbone.name={name!r} is not a timm model; list them with "
                "`python -c \"import timm; print(timm.list_models('vit*'))\"`."
            ) from None
        if "Invalid pretrained tag" in str(err):
            arch = name.split(".")[0]
            raise UserError(
                f"backbone.name={name!r}: timm publishes no such weights tag (backbone.tag). Tags for "
                f"{arch}: {', '.join(t.split('.', 1)[1] for t in timm.list_pretrained(arch + '.*')) or 'none'}."
            ) from None
        raise
    check_patch_size(model, img_size)
    report = load_checkpoint(model, checkpoint, allow_missing) if checkpoint else None
    if head_init_std is not None:
        init_head(model, float(head_init_std))
    return model, report


def init_head(model: nn.Module, std: float) -> None:
    """The new head as MAE fine-tuning (and MED-PEFT) starts it: weight trunc-normal with ``std`` (2e-5
    there; He et al., 2022, main_finetune.py), bias zero (timm's ViT head bias init)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        raise UserError(
            f"backbone.head_init_std={std} needs a Linear classifier head; this model has {head}."
        )
    with torch.no_grad():
        trunc_normal_(head.weight, std=std)
        if head.bias is not None:
            head.bias.zero_()


def check_patch_size(model: nn.Module, img_size: int | None) -> None:
    """A ViT silently crops an image its patch size does not divide; refuse that instead."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if img_size is None or patch is None:
        return
    patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
    if img_size % patch[0] or img_size % patch[1]:
        fit = (img_size // patch[0]) * patch[0]
        raise UserError(
            f"backbone.img_size={img_size} is not divisible by the patch size {patch[0]}: the ViT would "
            f"drop the border pixels. Use a multiple of {patch[0]}, e.g. backbone.img_size={fit} "
            f"or {fit + patch[0]}."
        )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat state dict without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone.checkpoint={path} does not exist; give the path to a local weights file.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_file(str(path))
    if suffix in TORCH_SUFFIXES:
        try:
            # MAE-style training scripts save their argparse Namespace beside the weights: a plain attribute
            # bag, safe to rebuild; everything else outside torch's allow-list stays refused.
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError for objects outside the safe allow-list
            raise UserError(
                f"{path} could not be loaded with weights_only=True ({type(err).__name__}). Only plain "
                "tensor checkpoints are accepted; convert it to safetensors in a trusted environment."
            ) from None
        return unwrap_state_dict(obj, path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            state = {k: torch.from_numpy(npz[k]) for k in npz.files}
        if any("/" in k for k in state):
            raise UserError(
                f"{path} is a JAX (big_vision / augreg) checkpoint with Flax names; timm converts those "
                f"itself: backbone.pretrained=true +backbone.kwargs.pretrained_cfg_overlay.file={path}"
            )
        return state
    raise UserError(
        f"backbone.checkpoint={path}: unknown format {suffix!r}; use .safetensors, .pth/.pt/.bin or .npz."
    )


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """Find the tensor dict inside a training checkpoint and strip a common ``module.``/``model.`` prefix."""
    while isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise UserError(f"{path} holds no tensors under any of {', '.join(STATE_DICT_KEYS)}.")
        obj = inner
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not contain a state dict (found {type(obj).__name__}).")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in ("module.", "model.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checkpoint(
    model: nn.Module, path: str | Path, allow_missing: Sequence[str] | None = None
) -> LoadReport:
    """Load local weights into ``model`` (head excluded when its shape differs) and report the key diff.

    Raises a :class:`UserError` when a backbone tensor would stay randomly initialised (unless one of the
    ``allow_missing`` globs matches it) or when the file holds tensors that look like the model's own under
    other names (see the module docstring)."""
    state = read_state_dict(path)
    own = model.state_dict()
    head_prefixes = head_parameter_prefixes(model)
    report = LoadReport(path=str(path))
    if is_lukemelas(state):
        state, report.converted_from = lukemelas_to_timm(state), "lukemelas PyTorch-Pretrained-ViT"
    state, report.dropped = drop_pretraining_only(state, model)
    state, report.resampled = resample_position_embedding(state, model)
    usable: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(head_prefixes) and (key not in own or own[key].shape != value.shape):
            report.skipped_head.append(key)
        elif key in own and own[key].shape != value.shape:
            raise UserError(
                f"{path}: tensor {key} has shape {tuple(value.shape)} but backbone expects "
                f"{tuple(own[key].shape)}; the checkpoint was made for another architecture or image size."
            )
        else:
            usable[key] = value
    result = model.load_state_dict(usable, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_prefixes)]
    new = documented_new(model, state)
    patterns = list(allow_missing or [])
    report.new = [k for k in missing if k in new]
    report.allowed_missing = [
        k for k in missing if k not in new and any(fnmatch.fnmatchcase(k, p) for p in patterns)
    ]
    report.missing = [k for k in missing if k not in new and k not in report.allowed_missing]
    report.unexpected = list(result.unexpected_keys)
    report.loaded = len(usable) - len(report.unexpected)
    if report.loaded == 0:
        raise UserError(
            f"{path} shares no tensor names with backbone {type(model).__name__}; is it a checkpoint of "
            f"this architecture? First keys: {', '.join(list(state)[:5])}."
        )
    check_complete(report, own, state)
    log.info("backbone checkpoint: %s", report.summary())
    return report


def documented_new(model: nn.Module, state: dict[str, Tensor]) -> set[str]:
    """Keys a checkpoint format defines as fresh: MAE fine-tuning's ``fc_norm`` (He et al., 2022, models_vit:
    global pooling builds a new norm after the pool) when the file carries none."""
    own = model.state_dict()
    if "fc_norm.weight" in own and "norm.weight" not in own and "fc_norm.weight" not in state:
        return {"fc_norm.weight", "fc_norm.bias"}
    return set()


def check_complete(report: LoadReport, own: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """Refuse a partial load: backbone tensors left random, or file tensors the model would silently ignore
    although they look like its own (renamed), which is the same failure seen from the other side."""
    suffixes = {".".join(k.split(".")[-2:]) for k in own}
    missing_shapes = {tuple(own[k].shape) for k in report.missing}
    renamed = [
        k
        for k in report.unexpected
        if ".".join(k.split(".")[-2:]) in suffixes or tuple(state[k].shape) in missing_shapes
    ]
    if not report.missing and not renamed:
        return

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:10]) + (f", ... (+{len(keys) - 10})" if len(keys) > 10 else "")

    problems = []
    if report.missing:
        problems.append(
            f"{len(report.missing)} backbone tensors would stay randomly initialised: {show(report.missing)}"
        )
    if renamed:
        problems.append(
            f"{len(renamed)} tensors of the file look like the backbone's under other names and would be "
            f"ignored: {show(renamed)}"
        )
    fix = (
        "rename the file's tensors to the model's (timm) names"
        if renamed
        else "accept fresh tensors on purpose with backbone.allow_missing=['<glob>', ...] (e.g. ['blocks.11.*'])"
    )
    raise UserError(
        f"{report.path} does not fit this backbone ({report.loaded} tensors loaded); "
        + "; ".join(problems)
        + f". Use the checkpoint of this architecture, or {fix}."
    )


def drop_pretraining_only(state: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """Remove MAE's decoder / mask token, and its encoder ``norm`` where the model pools through ``fc_norm``.

    MAE fine-tuning with global pooling deletes the encoder's final norm and learns a new ``fc_norm`` after
    the pooling (MAE ``models_vit.py``); timm's ``global_pool=avg`` builds the same (``norm`` = Identity).
    """
    own = model.state_dict()
    pools_with_fc_norm = "fc_norm.weight" in own and "norm.weight" not in own
    drop = [
        k
        for k in state
        if k not in own
        and (
            k.startswith(MAE_PRETRAINING_ONLY)
            or (pools_with_fc_norm and k in ("norm.weight", "norm.bias") and "fc_norm.weight" not in state)
        )
    ]
    return {k: v for k, v in state.items() if k not in drop}, drop


def resample_position_embedding(
    state: dict[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], list[str]]:
    """Bicubically resample a ViT position embedding saved for another grid (e.g. 224 px weights at 384 px)."""
    pos, own = state.get("pos_embed"), getattr(model, "pos_embed", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if pos is None or not isinstance(own, Tensor) or grid is None or pos.shape == own.shape:
        return state, []
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    if pos.ndim != 3 or pos.shape[2] != own.shape[2] or pos.shape[1] <= prefix:
        return state, []  # another architecture: the shape check in load_checkpoint reports it
    old = math.isqrt(pos.shape[1] - prefix)
    if old * old != pos.shape[1] - prefix:
        return state, []
    resampled = resample_abs_pos_embed(
        pos, new_size=list(grid), old_size=[old, old], num_prefix_tokens=prefix
    )
    log.info("pos_embed resampled from a %dx%d to a %dx%d grid", old, old, *grid)
    return {**state, "pos_embed": resampled}, ["pos_embed"]


def head_parameter_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classifier, found by identity so any timm architecture works."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = tuple(f"{n}." for n, m in model.named_modules() if head is not None and m is head)
    return names or ("head.",)
