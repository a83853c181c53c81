"""``adapter.safetensors``: only the trained tensors of a run, with the metadata to re-apply them.

Tensors: the trained parameters and the buffers of the modules that own them (e.g. sparse delta positions).
Metadata (all strings, as safetensors requires): ``format``, ``backbone``, ``strategy`` (+ ``rank``, ``alpha``,
``target_modules``, ``targets`` for LoRA), ``task``, ``class_names`` (JSON list), ``img_size``, and the
resolved ``backbone_config`` and ``strategy_config`` (JSON) that rebuild the model around it.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from src.atomic import atomic_write
from src.errors import UserError

FORMAT = "medpeft-adapter/1"


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """What ``adapter.safetensors`` stores (see :func:`adapter_tensors`), copied to the CPU."""
    return {name: t.detach().cpu().contiguous() for name, t in adapter_tensors(model).items()}


def adapter_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The trained parameters, plus the persistent buffers of the modules that own them: those say how the
    parameters apply (e.g. the positions of sparse delta values). Not copied, so a model on the meta device
    can be sized."""
    out: dict[str, Tensor] = {}
    for prefix, module in model.named_modules():
        trained = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not trained:
            continue
        persistent = [
            (n, b)
            for n, b in module.named_buffers(recurse=False)
            if n not in module._non_persistent_buffers_set
        ]
        for name, tensor in [*trained, *persistent]:
            out[f"{prefix}.{name}" if prefix else name] = tensor
    return out


def save_adapter(model: nn.Module, path: str | Path, metadata: dict[str, str]) -> int:
    """Write the trainable tensors atomically (temp file + rename); returns the file size in bytes."""
    with atomic_write(path) as tmp:
        save_file(trainable_state_dict(model), str(tmp), metadata={"format": FORMAT, **metadata})
    return Path(path).stat().st_size


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header of a safetensors file; anything else (a pickle, a truncated file) is refused unread."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise UserError(
            f"{path} is not a readable safetensors file ({err}). Adapters are only read from the "
            "adapter.safetensors a run writes; pickled .pt/.pth files are never loaded."
        ) from None


def read_adapter(path: str | Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors) of an adapter file, refusing anything that is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"adapter file {path} does not exist.")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a medpeft adapter (format={meta.get('format')!r}, want {FORMAT}).")
    with safe_open(str(path), framework="pt") as f:  # read_metadata checked the header and the size
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    return meta, tensors


def load_adapter(model: nn.Module, path: str | Path, expect: dict[str, str] | None = None) -> dict[str, str]:
    """Load an adapter into a model built with the same backbone and strategy; returns its metadata.

    ``expect`` lists metadata that must match (e.g. backbone, strategy, rank, class_names): a mismatch is a
    clear error rather than a silently wrong model.
    """
    meta, tensors = read_adapter(path)
    wrong = {k: (meta.get(k), v) for k, v in (expect or {}).items() if meta.get(k) != v}
    if wrong:
        detail = "; ".join(f"{k}: file has {got!r}, model has {want!r}" for k, (got, want) in wrong.items())
        raise UserError(f"adapter {path} does not match this model: {detail}.")
    own = model.state_dict()
    bad = [k for k, v in tensors.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise UserError(
            f"adapter {path} has {len(bad)} tensors this model lacks or shapes differently, e.g. {bad[:3]}; "
            "it was trained with another backbone, strategy or rank."
        )
    model.load_state_dict(tensors, strict=False)
    return meta


def class_names_json(names: tuple[str, ...] | list[str]) -> str:
    return json.dumps(list(names))
