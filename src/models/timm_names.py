"""From a backbone preset (architecture, pretraining tag, image size) to timm's model name and normalisation.

Used by the config resolvers ``${timm_name:...}`` and ``${timm_norm:...}`` (registered in src/config.py), so a
preset names the weights once and ``backbone.img_size`` / ``backbone.tag`` overrides pick the matching timm
model. Nothing here downloads: timm's pretrained configs are part of the installed package. The functions
never raise (an exception inside an OmegaConf resolver surfaces as an unreadable interpolation error); a
name timm does not know is refused later, with a clear message, by :func:`src.models.backbone.create_backbone`.
"""

from __future__ import annotations

from timm.models import get_pretrained_cfg, is_model

# Architectures whose pretrained weights exist at 224 px; other sizes resample the position embedding.
BASE_SIZE = 224


def timm_name(arch: str, img_size: int, tag: str | None = None) -> str:
    """``<arch>_<size>[.<tag>]``: the model timm registers for this size, else the 224 px one.

    timm registers e.g. ``vit_base_patch16_384`` next to ``vit_base_patch16_224`` and publishes some tags at
    both sizes (``augreg_in1k``) and some at 224 px only (``augreg2_in21k_ft_in1k``, ``dino``, ``mae``). A
    size-specific model with this tag is preferred (its weights were fine-tuned at that size); otherwise the
    224 px model is built at ``img_size`` and timm resamples its position embedding when loading weights.
    """
    suffix = f".{tag}" if tag else ""
    for size in (img_size, BASE_SIZE):
        name = f"{arch}_{size}"
        if is_model(name) and (not tag or has_tag(name, tag)):
            return f"{name}{suffix}"
    return f"{arch}_{BASE_SIZE}{suffix}"


def has_tag(name: str, tag: str) -> bool:
    try:
        return get_pretrained_cfg(f"{name}.{tag}") is not None
    except RuntimeError:  # timm's answer to a tag it does not publish for this model
        return False


def timm_norm(which: str, name: str) -> list[float]:
    """The ``mean`` or ``std`` the weights of timm model ``name`` were trained with (0.5 if timm has none)."""
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    values = getattr(cfg, which, None) if cfg is not None else None
    return [float(v) for v in values] if values else [0.5, 0.5, 0.5]
