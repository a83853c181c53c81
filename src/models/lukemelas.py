"""lukemelas PyTorch-Pretrained-ViT checkpoints (``pytorch_pretrained_vit``, e.g. ``B_16_imagenet1k.pth``) in
timm's ViT names.

MeLo (Zhu et al., ISBI 2024) trained its 384 px NIH ChestX-ray14 and INbreast adapters on
``ViT('B_16_imagenet1k')`` from that package. Its layout (``pytorch_pretrained_vit/model.py`` and
``transformer.py``): ``patch_embedding``, ``class_token``, ``positional_embedding.pos_embedding``,
``transformer.blocks.N.{norm1, attn.proj_q, attn.proj_k, attn.proj_v, proj, norm2, pwff.fc1, pwff.fc2}``,
``norm``, ``fc`` and, in the ImageNet-21k files, a ``pre_logits`` representation layer that the package itself
drops unless ``load_repr_layer=True`` (a classifier fine-tuned from it, as MeLo's, never has it). The maths is
timm's ViT: pre-norm blocks with LayerNorm eps 1e-6, exact GELU, scaled dot-product attention with
1/sqrt(head_dim), final norm, head on the class token. Only the attention differs in form: three Linears
instead of timm's fused ``qkv``, so they are concatenated as ``[q; k; v]`` (rows), the order timm splits them
in. MeLo's LoRA on ``proj_q`` / ``proj_v`` therefore acts on the query / value thirds of the fused ``qkv``,
which is what :class:`~src.strategies.lora_qv.QVLoRALinear` adapts.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

BLOCK = re.compile(r"transformer\.blocks\.(\d+)\.(.+)")
# lukemelas name inside a block -> timm name inside a block (attention q/k/v handled apart)
BLOCK_NAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "proj": "attn.proj",
    "pwff.fc1": "mlp.fc1",
    "pwff.fc2": "mlp.fc2",
}
TOP_NAMES = {
    "patch_embedding.weight": "patch_embed.proj.weight",
    "patch_embedding.bias": "patch_embed.proj.bias",
    "class_token": "cls_token",
    "positional_embedding.pos_embedding": "pos_embed",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
    "fc.weight": "head.weight",
    "fc.bias": "head.bias",
}
# Dropped as pytorch_pretrained_vit's own loader drops it for a classifier (load_repr_layer=False).
REPRESENTATION = ("pre_logits.",)


def is_lukemelas(state: dict[str, Tensor]) -> bool:
    return any(k.startswith("transformer.blocks.") and ".attn.proj_q." in k for k in state)


def lukemelas_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same weights under timm ``VisionTransformer`` names; a key of neither kind is kept as is (and then
    reported by the loader as unexpected)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith(REPRESENTATION):
            continue
        match = BLOCK.fullmatch(key)
        if match is None:
            out[TOP_NAMES.get(key, key)] = value
            continue
        block, rest = int(match.group(1)), match.group(2)
        part = re.fullmatch(r"attn\.proj_([qkv])\.(weight|bias)", rest)
        if part is not None:
            qkv.setdefault((block, part.group(2)), {})[part.group(1)] = value
            continue
        module, _, param = rest.rpartition(".")
        out[f"blocks.{block}.{BLOCK_NAMES.get(module, module)}.{param}"] = value
    for (block, param), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"blocks.{block}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
        else:  # incomplete: keep the pieces so the loader lists them instead of guessing
            out |= {f"transformer.blocks.{block}.attn.proj_{p}.{param}": v for p, v in parts.items()}
    return out
