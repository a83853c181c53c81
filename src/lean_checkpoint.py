"""Lean checkpoints: ``last.ckpt`` and the best checkpoint hold what training changes, not the frozen backbone.

A PEFT run trains a few hundred thousand weights over a frozen backbone of 86 M (ViT-B/16): a checkpoint that
stores the whole model is ~343 MB written every ``every_n_train_steps``, of which ~342 MB never change. Here the
LightningModule's ``on_save_checkpoint`` drops every frozen parameter (``requires_grad=False``) from the
checkpoint's ``state_dict`` and records instead the backbone's identity (its resolved config: timm name,
``checkpoint`` file, ``pretrained``, ``img_size``) and a SHA-256 over the frozen tensors (names, dtypes,
shapes and bytes). Trainable parameters, every buffer (e.g. sparse delta positions, norm statistics),
optimizer / scheduler state, loops and callback states stay as Lightning writes them. Nothing depends on which
callback saves (our ``last.ckpt`` callback or Lightning's ``ModelCheckpoint``).

Loading (``on_load_checkpoint``, and :func:`src.checkpoint_io.read_checkpoint` before Lightning) takes the
frozen tensors from the model in memory, which ``src.train`` / ``src.eval`` rebuild from the run's config (the
backbone file, the hub weights or, for a random init, the run's seed), verifies their checksum against the
recorded one and refuses a mismatch: a changed weights file or another backbone never loads silently.
``full`` fine-tuning freezes nothing, so its checkpoints stay complete.

The checksum is computed once per process and reused while the frozen tensors are unchanged (same storage,
same autograd version counter: any in-place write, such as merging an adapter, invalidates it).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from src.errors import UserError

KEY = "medpeft_lean"  # the checkpoint entry that marks a lean checkpoint
FORMAT = "medpeft-lean/1"
_cache: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def frozen_tensors(module: nn.Module) -> dict[str, Tensor]:
    """State-dict name -> frozen parameter (``requires_grad=False``): what a lean checkpoint leaves out."""
    # Parameter names are their state-dict keys; named_parameters is several times cheaper than state_dict.
    return {n: p for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def checksum(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order; the same on any device."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def frozen_checksum(module: nn.Module, frozen: Mapping[str, Tensor] | None = None) -> str:
    """:func:`checksum` of the module's frozen tensors, cached while none of them changed."""
    frozen = frozen_tensors(module) if frozen is None else frozen
    key = tuple((n, t.data_ptr(), t._version, str(t.device), t.dtype) for n, t in sorted(frozen.items()))
    cached = _cache.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    value = checksum(frozen)
    _cache[module] = (key, value)
    return value


def make_lean(module: nn.Module, checkpoint: dict[str, Any], backbone: Mapping[str, Any] | None) -> None:
    """``on_save_checkpoint``: drop the frozen parameters from ``checkpoint['state_dict']``, record their
    identity. ``backbone``: the run's resolved backbone config (how to rebuild them), or None if unknown."""
    frozen = frozen_tensors(module)
    state = checkpoint["state_dict"]
    for name in frozen:
        state.pop(name, None)
    checkpoint[KEY] = {
        "format": FORMAT,
        "backbone": _plain(dict(backbone)) if backbone is not None else None,
        "omitted": sorted(frozen),
        "checksum": frozen_checksum(module, frozen) if frozen else None,
    }


def restore_frozen(
    module: nn.Module,
    checkpoint: dict[str, Any],
    source: str = "the checkpoint",
    backbone: Mapping[str, Any] | None = None,
) -> None:
    """``on_load_checkpoint``: check that ``module`` holds the frozen tensors the checkpoint was trained on and
    put them into ``checkpoint['state_dict']``, so the strict load that follows sees a complete state dict.
    A checkpoint without the lean entry (``full``, or written before lean checkpoints) is left as it is."""
    lean = checkpoint.get(KEY)
    if lean is None:
        return
    if not isinstance(lean, dict) or lean.get("format") != FORMAT:
        raise UserError(
            f"{source}: unknown lean-checkpoint format {lean!r:.80}; it was written by another version."
        )
    frozen = frozen_tensors(module)
    omitted = set(lean["omitted"])
    if omitted != set(frozen):
        extra, missing = sorted(set(frozen) - omitted), sorted(omitted - set(frozen))
        raise UserError(
            f"{source} does not fit this model: it was trained with {len(omitted)} frozen tensors, this model "
            f"freezes {len(frozen)} (e.g. {', '.join((extra or missing)[:3])}). It comes from a run with another "
            "backbone or strategy than this config."
        )
    if frozen and frozen_checksum(module, frozen) != lean["checksum"]:
        raise UserError(mismatch_message(source, lean, frozen_checksum(module, frozen), backbone))
    checkpoint["state_dict"].update({name: t.detach() for name, t in frozen.items()})


def mismatch_message(
    source: str, lean: Mapping[str, Any], now: str, backbone: Mapping[str, Any] | None
) -> str:
    recorded = lean.get("backbone") or {}
    what = (
        f"backbone.name={recorded.get('name')!r}, backbone.checkpoint={recorded.get('checkpoint')!r}, "
        f"backbone.pretrained={recorded.get('pretrained')!r}"
    )
    differ = [
        f"{k}: run had {recorded.get(k)!r}, now {backbone.get(k)!r}"
        for k in ("name", "checkpoint", "pretrained", "img_size", "kwargs")
        if backbone is not None and recorded.get(k) != backbone.get(k)
    ]
    hint = (
        f"The config differs from the run's ({'; '.join(differ)})."
        if differ
        else "The config is the same, so the weights file changed since the run (or, for a randomly "
        "initialised backbone, the seed or the library version did)."
    )
    return (
        f"{source} holds only the trained tensors; its frozen backbone ({what}) had checksum "
        f"{str(lean.get('checksum'))[:16]}, but the backbone rebuilt now has {now[:16]}. {hint} Restore the "
        "backbone weights the run was trained on (backbone.checkpoint=PATH); loading the adapter onto other "
        "weights would give silently wrong results."
    )


def _plain(value: Any) -> Any:
    """Plain Python containers and scalars only, so the checkpoint loads with ``torch.load(weights_only=True)``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
