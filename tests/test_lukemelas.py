"""lukemelas PyTorch-Pretrained-ViT files (MeLo's 384 px backbone): a small re-implementation of that package's
ViT (its names and maths: separate proj_q/k/v, transformer.blocks.N.*, pwff, final norm, fc on the class
token) with random weights is saved in its layout; our timm backbone loaded from the file gives its logits, and
MeLo's LoRA on proj_q / proj_v gives the same outputs as our q/v LoRA on the fused qkv."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from src.melo import load_melo
from src.models.backbone import create_backbone
from src.strategies.lora_qv import inject_qv_lora

DIM, HEADS, DEPTH, FF, PATCH, SIZE, CLASSES = 32, 4, 2, 64, 8, 32, 3
TIMM = {
    "name": "vit_tiny_patch16_224",
    "img_size": SIZE,
    "model_kwargs": {
        "patch_size": PATCH,
        "embed_dim": DIM,
        "depth": DEPTH,
        "num_heads": HEADS,
        "mlp_ratio": 2,
    },
}


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj_q, self.proj_k, self.proj_v = (nn.Linear(DIM, DIM) for _ in range(3))

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (
            p(x).view(b, s, HEADS, -1).transpose(1, 2) for p in (self.proj_q, self.proj_k, self.proj_v)
        )
        scores = (q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))).softmax(-1)
        return (scores @ v).transpose(1, 2).reshape(b, s, DIM)


class FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(DIM, FF), nn.Linear(FF, DIM)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.proj = Attention(), nn.Linear(DIM, DIM)
        self.norm1, self.norm2 = nn.LayerNorm(DIM, eps=1e-6), nn.LayerNorm(DIM, eps=1e-6)
        self.pwff = FeedForward()

    def forward(self, x):
        x = x + self.proj(self.attn(self.norm1(x)))
        return x + self.pwff(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))


class PositionalEmbedding1D(nn.Module):
    def __init__(self, seq_len: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, seq_len, DIM) * 0.02)


class LukemelasViT(nn.Module):
    """pytorch_pretrained_vit.ViT, classifier='token', no representation layer (as B_16_imagenet1k)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.class_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.02)
        self.positional_embedding = PositionalEmbedding1D((SIZE // PATCH) ** 2 + 1)
        self.transformer = Transformer()
        self.norm = nn.LayerNorm(DIM, eps=1e-6)
        self.fc = nn.Linear(DIM, CLASSES)

    def forward(self, x):
        x = self.patch_embedding(x).flatten(2).transpose(1, 2)
        x = (
            torch.cat((self.class_token.expand(len(x), -1, -1), x), 1)
            + self.positional_embedding.pos_embedding
        )
        for block in self.transformer.blocks:
            x = block(x)
        return self.fc(self.norm(x)[:, 0])


class MeloLoRA(nn.Module):
    """MeLo's _LoRA_qkv on lukemelas' separate projection: W x + b + s * B(A(x)), s = alpha // r."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, s: int) -> None:
        super().__init__()
        self.base, self.a, self.b, self.s = base, a, b, s

    def forward(self, x):
        return self.base(x) + self.s * (x @ self.a.T @ self.b.T)


def reference(tmp_path: Path) -> tuple[LukemelasViT, Path]:
    torch.manual_seed(0)
    ref = LukemelasViT().eval()
    with torch.no_grad():
        for p in ref.parameters():  # non-trivial everywhere, norms included
            p.add_(torch.randn_like(p) * 0.1)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    state["pre_logits.weight"] = torch.randn(DIM, DIM)  # 21k files carry it; the package's loader drops it
    state["pre_logits.bias"] = torch.randn(DIM)
    path = tmp_path / "B_16_imagenet1k.pth"
    torch.save(state, path)
    return ref, path


def test_lukemelas_checkpoint_gives_the_reference_logits(tmp_path: Path) -> None:
    ref, path = reference(tmp_path)
    model, report = create_backbone(num_classes=CLASSES, checkpoint=str(path), **TIMM)
    assert report.converted_from and report.missing == [] and report.unexpected == []
    assert report.loaded == len(model.state_dict())  # every tensor, head included (same class count)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), atol=1e-5, rtol=1e-5)

    # MeLo's LoRA on proj_q / proj_v (its file layout: w_a/w_b 2i = query of block i, 2i+1 = value) equals
    # our q/v LoRA on the fused qkv loaded from that file.
    rank, alpha, tensors = 2, 4, {}
    for i, block in enumerate(ref.transformer.blocks):
        for idx, name in ((2 * i, "proj_q"), (2 * i + 1, "proj_v")):
            a, b = torch.randn(rank, DIM) * 0.3, torch.randn(DIM, rank) * 0.3
            tensors[f"w_a_{idx:03d}"], tensors[f"w_b_{idx:03d}"] = a, b
            setattr(block.attn, name, MeloLoRA(getattr(block.attn, name), a, b, alpha // rank))
    tensors[f"fc_{DIM}in_{CLASSES}out"] = ref.fc.weight.detach().clone()
    nn.init.zeros_(ref.fc.bias)  # MeLo saves no head bias
    melo_file = tmp_path / "nih_base1_lora.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(melo_file))
    inject_qv_lora(model, [f"blocks.{i}.attn.qkv" for i in range(DEPTH)], rank, alpha, 0.0)
    load_melo(model, melo_file, alpha=alpha)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)
