"""Parameter counts per strategy (table-driven), the MeLo count on ViT-B, and bad-target errors."""

from __future__ import annotations

import pytest
import torch

from src.errors import UserError
from src.models.backbone import create_backbone
from src.strategies import count_parameters
from src.strategies.bitfit import BitFit
from src.strategies.full import FullFineTuning
from src.strategies.linear import LinearProbe
from src.strategies.lora import LoRA
from src.strategies.lora_qv import QVLoRALinear
from tests.conftest import TINY

D, BLOCKS, CLASSES = 192, 2, 3
HEAD = D * CLASSES + CLASSES


def tiny_model():
    torch.manual_seed(0)
    return create_backbone(num_classes=CLASSES, **TINY)[0]


def n_biases(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))


CASES = [
    ("linear", LinearProbe(), lambda m: HEAD),
    ("bitfit", BitFit(), lambda m: n_biases(m) + D * CLASSES),
    ("lora_r1", LoRA(rank=1), lambda m: BLOCKS * 1 * (D + 3 * D) + HEAD),
    ("lora_r8", LoRA(rank=8), lambda m: BLOCKS * 8 * (D + 3 * D) + HEAD),
    (
        "lora_qkv_proj",
        LoRA(rank=2, target_modules=["qkv", "attn.proj"]),
        lambda m: BLOCKS * 2 * (4 * D + 2 * D) + HEAD,
    ),
    ("lora_qv_r4", LoRA(rank=4, targets="qv"), lambda m: BLOCKS * 4 * 4 * D + HEAD),
    ("full", FullFineTuning(), lambda m: sum(p.numel() for p in m.parameters())),
]


@pytest.mark.parametrize(("label", "strategy", "expected"), CASES, ids=[c[0] for c in CASES])
def test_trainable_counts(label, strategy, expected) -> None:
    model = tiny_model()
    reference = expected(model)
    model = strategy.apply(model)
    trainable, _ = count_parameters(model)
    assert trainable == reference
    assert all(p.requires_grad for p in model.get_classifier().parameters())


def test_lora_leaves_the_function_unchanged_at_start() -> None:
    model = tiny_model().eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    after = LoRA(rank=4).apply(model)(x)
    torch.testing.assert_close(before, after)


@pytest.mark.parametrize("targets", ["qkv", "qv"])
def test_melo_count_on_vit_base(targets: str) -> None:
    """MeLo's figure: LoRA r=4 on ViT-B/16 qkv trains 147,456 + a 2-class head of 1,538 = 0.173 %."""
    model, _ = create_backbone("vit_base_patch16_224", num_classes=2, img_size=224)
    model = LoRA(rank=4, alpha=4, targets=targets).apply(model)
    trainable, total = count_parameters(model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert (lora, trainable) == (147_456, 148_994)
    assert round(100 * trainable / total, 3) == 0.173


def test_unknown_target_modules_list_what_exists() -> None:
    with pytest.raises(UserError, match=r"blocks\.N\.attn\.qkv") as err:
        LoRA(target_modules=["query"]).apply(tiny_model())
    assert "peft.target_modules" in str(err.value)


def test_image_size_must_be_divisible_by_the_patch() -> None:
    with pytest.raises(UserError, match=r"backbone.img_size=36 .* patch size 8"):
        create_backbone(num_classes=2, **{**TINY, "img_size": 36})


def test_unknown_timm_name_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"backbone\.name='vit_nonexistent'"):
        create_backbone("vit_nonexistent", num_classes=2)


def test_qv_lora_follows_its_formula_and_leaves_k_alone() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 24)
    layer = QVLoRALinear(base, rank=2, alpha=4.0)
    for b in (layer.lora_B_q, layer.lora_B_v):
        torch.nn.init.normal_(b.weight)
    x = torch.randn(3, 5, 8)
    out = layer(x)
    w, bias, s = base.weight, base.bias, 2.0
    aq, bq, av, bv = (m.weight for m in (layer.lora_A_q, layer.lora_B_q, layer.lora_A_v, layer.lora_B_v))
    torch.testing.assert_close(out[..., :8], x @ w[:8].T + bias[:8] + s * x @ aq.T @ bq.T)
    torch.testing.assert_close(out[..., 8:16], x @ w[8:16].T + bias[8:16])
    torch.testing.assert_close(out[..., 16:], x @ w[16:].T + bias[16:] + s * x @ av.T @ bv.T)
    merged = torch.nn.functional.linear(x, w + layer.delta_weight(), bias)
    torch.testing.assert_close(out, merged)
    out.sum().backward()
    assert base.weight.grad is None and layer.lora_A_q.weight.grad is not None


def test_qv_lora_needs_a_fused_qkv() -> None:
    with pytest.raises(UserError, match=r"peft\.targets=qv needs fused qkv"):
        LoRA(targets="qv", target_modules=["fc1"]).apply(tiny_model())
    with pytest.raises(UserError, match=r"peft\.targets='kv'"):
        LoRA(targets="kv").apply(tiny_model())
