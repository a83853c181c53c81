"""SSF (Lian et al., NeurIPS 2022) through the strategy hooks alone: forward against forward hooks on the plain
backbone, merge against the unmerged model and against diag(γ) W, the adapter bank, the adapter file, and a
run from the composed config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from src.adapter import load_adapter, read_adapter, save_adapter
from src.bank import AdapterBank
from src.errors import UserError
from src.optim import build_optimizer
from src.strategies.ssf import SSF
from src.train import train
from tests.conftest import TINY

TARGETS = ("attn.proj", "mlp.fc2")


def trained(model: nn.Module, seed: int) -> nn.Module:
    """'Trained' SSF: scales far from 1 and shifts far from 0, so every check sees them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                centre = 1.0 if name.endswith("ssf_scale") else 0.0
                p.copy_(centre + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def reference(plain: nn.Module, ssf_model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The paper's y = γ ⊙ (W x + b) + β, as forward hooks on the untouched backbone's Linear outputs."""
    params = dict(ssf_model.named_parameters())
    hooks = []
    for i, block in enumerate(plain.blocks):
        for target in TARGETS:
            scale = params[f"blocks.{i}.{target}.ssf_scale"].detach()
            shift = params[f"blocks.{i}.{target}.ssf_shift"].detach()
            layer = block.get_submodule(target)
            hooks.append(layer.register_forward_hook(lambda m, a, out, g=scale, b=shift: out * g + b))
    plain.head.load_state_dict(ssf_model.head.state_dict())
    with torch.no_grad():
        out = plain.eval()(x)
    for h in hooks:
        h.remove()
    return out


def test_forward_and_merge_match_an_independent_computation(tiny_model) -> None:
    torch.manual_seed(0)
    plain = tiny_model()
    model = tiny_model()
    model.load_state_dict(plain.state_dict())
    strategy = SSF()
    model = trained(strategy.apply(model), seed=1)
    width, depth = plain.embed_dim, len(plain.blocks)
    head = sum(p.numel() for p in plain.head.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum(model.get_parameter(n).numel() for n in trainable) == 2 * 2 * width * depth + head
    x = torch.randn(3, 3, 32, 32)
    expected = reference(plain, model, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        weights = {n: t.clone() for n, t in model.state_dict().items()}
        assert strategy.merge(model) == 2 * depth
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        proj = model.blocks[1].attn.proj
        w, b = plain.blocks[1].attn.proj.weight, plain.blocks[1].attn.proj.bias
        torch.testing.assert_close(proj.base.weight, proj.ssf_scale[:, None] * w)  # diag(γ) W
        torch.testing.assert_close(proj.base.bias, proj.ssf_scale * b + proj.ssf_shift)
        strategy.unmerge(model)
        assert all(torch.equal(t, weights[n]) for n, t in model.state_dict().items())
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_adapter_round_trip_and_bank_switching(tiny_model, tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = {k: v for k, v in tiny_model().state_dict().items() if not k.startswith("head")}
    x = torch.randn(2, 3, 32, 32)
    outputs = {}
    meta = {"backbone": TINY["name"], "img_size": "32"}
    for seed, classes in ((0, 2), (1, 5)):
        model = tiny_model(classes)
        model.load_state_dict(backbone, strict=False)
        model = trained(SSF().apply(model), seed)
        names = [f"c{i}" for i in range(classes)]
        save_adapter(
            model,
            tmp_path / f"t{seed}.safetensors",
            {**meta, **SSF().metadata(), "class_names": str(names).replace("'", '"')},
        )
        outputs[f"t{seed}"] = model(x).detach()
    _, tensors = read_adapter(tmp_path / "t0.safetensors")  # only what trains: scales, shifts, head
    assert {k.rsplit(".", 1)[-1] for k in tensors} == {"ssf_scale", "ssf_shift", "weight", "bias"}
    assert all(k.startswith("head.") for k in tensors if not k.endswith(("ssf_scale", "ssf_shift")))

    fresh = tiny_model(2)
    fresh.load_state_dict(backbone, strict=False)
    fresh = SSF().apply(fresh)
    load_adapter(fresh, tmp_path / "t0.safetensors", expect=SSF().metadata())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), outputs["t0"], rtol=0, atol=0)

    strategy, model = SSF(), tiny_model()
    model.load_state_dict(backbone, strict=False)
    bank = AdapterBank(strategy.apply(model), strategy)
    for name in outputs:
        bank.add(name, tmp_path / f"{name}.safetensors")
    frozen = {n: t.clone() for n, t in model.named_parameters() if not t.requires_grad}
    with torch.no_grad():
        for name in ["t1", "t0", "t1", "t0"]:
            bank.switch(name)
            torch.testing.assert_close(bank.model(x), outputs[name], rtol=0, atol=0)
            bank.switch(name, merge=True)
            torch.testing.assert_close(bank.model(x), outputs[name], rtol=1e-5, atol=1e-5)
        bank.switch("t1")
    assert all(torch.equal(t, frozen[n]) for n, t in model.named_parameters() if n in frozen)
    with pytest.raises(UserError, match=r"targets 'mlp\.fc2' vs 'attn\.proj,mlp\.fc2'"):
        other = SSF(targets=["mlp.fc2"])
        save_adapter(
            other.apply(tiny_model()), tmp_path / "x.safetensors",
            {**meta, **other.metadata(), "class_names": '["a", "b"]'},
        )  # fmt: skip
        bank.add("x", tmp_path / "x.safetensors")


def test_scales_and_shifts_take_no_weight_decay(tiny_model) -> None:
    strategy = SSF()
    model = strategy.apply(tiny_model())
    node = {"_target_": "torch.optim.AdamW", "_partial_": True}
    opt = build_optimizer(model, node, weight_decay=0.05, no_weight_decay=strategy.no_weight_decay())
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(decay[id(p)] == 0.0 for n, p in model.named_parameters() if "ssf_" in n)
    assert decay[id(model.head.weight)] == 0.05


def test_a_run_with_peft_ssf_trains_only_scales_shifts_and_head(make_cfg) -> None:
    metrics = train(make_cfg("peft=ssf", "debug=fdr"))
    _, tensors = read_adapter(metrics["adapter_path"])
    assert sum(t.numel() for t in tensors.values()) == metrics["trainable_params"]
    assert any(k.endswith("attn.proj.ssf_scale") for k in tensors)
    assert any(k.endswith("mlp.fc2.ssf_shift") for k in tensors)
