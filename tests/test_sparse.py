"""peft=sparse: budgets, the delta's gradient, selections, importance estimators, errors, training round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from safetensors.torch import save_file
from torch import nn

from src.adapter import load_adapter
from src.bank import AdapterBank
from src.errors import UserError
from src.eval import evaluate
from src.models.backbone import create_backbone
from src.strategies import count_parameters
from src.strategies.lora import LoRA
from src.strategies.sparse import Sparse
from src.strategies.sparse.delta import SparseDeltaLinearFn, sparse_pattern
from src.strategies.sparse.importance import agnostic_importance, hybrid, task_importance
from src.strategies.sparse.selection import select
from src.strategies.sparse.strategy import rank_budget, sparse_layers
from src.tasks import Task
from src.train import build_model, fit
from tests.conftest import TINY

CLASSES = 3
# Per block: qkv 192 x 576, proj 192 x 192, fc1 192 x 768, fc2 768 x 192; two blocks.
ELIGIBLE = 2 * (192 * 576 + 192 * 192 + 192 * 768 + 768 * 192)
ROWS = 2 * (576 + 192 + 768 + 192)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(num_classes=CLASSES, **TINY)[0]


def batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, CLASSES, (4,), generator=g))
        for _ in range(n)
    ]


BUDGETS = [
    ("fraction_global", {"budget": 0.001}, round(0.001 * ELIGIBLE)),
    ("fraction_per_layer", {"budget": 0.001, "selection": "per_layer"}, round(0.001 * ELIGIBLE)),
    ("per_neuron_remainder", {"budget": 0.01, "selection": "per_neuron"}, round(0.01 * ELIGIBLE)),
    ("rank_4", {"budget": "rank", "rank": 4}, 2 * 4 * (192 + 576)),
    (
        "task_only_fisher",
        {"budget": 0.0005, "importance": {"task": "fisher", "mix": 1.0}},
        round(0.0005 * ELIGIBLE),
    ),
    (
        "agnostic_only_l2",
        {"budget": 0.0005, "importance": {"agnostic": "magnitude_l2", "mix": 0}},
        round(0.0005 * ELIGIBLE),
    ),
]


@pytest.mark.parametrize(("label", "kwargs", "k"), BUDGETS, ids=[b[0] for b in BUDGETS])
def test_trainable_entries_equal_the_budget(label: str, kwargs: dict, k: int) -> None:
    strategy = Sparse(**kwargs)
    model = strategy.apply(tiny_model())
    strategy.prepare(model, batches(), F.cross_entropy)
    values, indices = model.sparse_delta.values, model.sparse_delta.indices
    head = sum(p.numel() for p in model.get_classifier().parameters())
    assert values.numel() == k and count_parameters(model)[0] == k + head
    assert indices.unique().numel() == k and torch.equal(indices, indices.sort().values)
    assert sum(model.sparse_delta.counts()) == k and (values == 0).all()


@pytest.mark.parametrize("rank", [1, 4])
def test_rank_budget_is_loras_count(rank: int) -> None:
    lora = LoRA(rank=rank).apply(tiny_model())
    head = sum(p.numel() for p in lora.get_classifier().parameters())
    sparse = Sparse(budget="rank", rank=rank).apply(tiny_model())
    assert sparse.sparse_delta.values.numel() == count_parameters(lora)[0] - head


@pytest.mark.parametrize("rank", [1, 16])
def test_composed_sparse_config_matches_loras_count(rank: int, make_cfg) -> None:
    """`-m peft=lora,sparse rank=...` is parameter-matched out of the box (tiny: 4 blocks)."""
    task = Task("binary", ("normal", "opacity"))
    lora, _ = build_model(make_cfg("peft=lora", f"rank={rank}"), task)
    sparse, _ = build_model(make_cfg("peft=sparse", f"rank={rank}"), task)
    assert count_parameters(sparse)[0] == count_parameters(lora)[0] == 4 * rank * (192 + 576) + 2 * 192 + 2


def test_rank_budget_on_vit_base_is_147456() -> None:
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=2)
    assert rank_budget(model, 4, ["qkv"]) == 147_456


@pytest.mark.parametrize(
    ("index", "compute"),
    [
        ([0, 3, 9, 20, 41], torch.float64),
        ([7, 8, 9, 10, 11, 12], torch.float64),
        ([0, 3, 9, 20, 41], torch.float32),
    ],
    ids=["spread", "one_row", "separate_sparse_path"],
)
def test_delta_gradient_is_the_dense_gradient_gathered(index: list[int], compute: torch.dtype) -> None:
    """float64 compute: one product with W + S(v). float32 compute with float64 values: the base product in
    float32 and the sparse one separately in float64, as under bf16 autocast (tolerance: float32's)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    index = torch.tensor(index)  # positions in the 6 x 7 weight; "one_row" leaves rows 0 and 2-5 empty
    values = torch.randn(len(index), dtype=torch.float64, requires_grad=True)
    args = (x, weight, bias, values, sparse_pattern(index, (6, 7)), compute)
    target = torch.randn(2, 5, 6, dtype=torch.float64)

    (SparseDeltaLinearFn.apply(*args) * target).sum().backward()
    got = [t.grad.clone() for t in (x, weight, bias, values)]
    for t in (x, weight, bias, values):
        t.grad = None
    dense = weight.flatten().index_put((index,), values, accumulate=True).view_as(weight)
    (F.linear(x, dense, bias) * target).sum().backward()
    tol = 1e-12 if compute == torch.float64 else 1e-5
    for mine, reference in zip(got, (x.grad, weight.grad, bias.grad, values.grad), strict=True):
        torch.testing.assert_close(mine, reference, rtol=tol, atol=tol)
    torch.testing.assert_close(values.grad, weight.grad.flatten()[index], rtol=1e-12, atol=1e-12)
    if compute == torch.float64:
        assert torch.autograd.gradcheck(SparseDeltaLinearFn.apply, args)


def test_training_computes_no_dense_weight_gradient() -> None:
    strategy = Sparse(budget=0.001)
    model = strategy.apply(tiny_model())
    images = batches(1)[0][0]
    with torch.inference_mode():  # as validation before the first training step: the cache must stay usable
        model(images)
    model(images).sum().backward()
    assert all(layer.base.weight.grad is None for layer in sparse_layers(model).values())
    assert model.sparse_delta.values.grad is not None


def rows_of(local: torch.Tensor, width: int) -> torch.Tensor:
    return torch.bincount(local // width)


def test_selections() -> None:
    torch.manual_seed(0)
    scores = [torch.rand(4, 6), torch.rand(4, 3)]
    flat = torch.cat([s.flatten() for s in scores])
    chosen = select(scores, 5, "global")
    assert sorted(
        torch.cat([s.flatten()[c] for s, c in zip(scores, chosen, strict=True)]).tolist()
    ) == sorted(flat.topk(5).values.tolist())
    assert [c.numel() for c in select(scores, 12, "per_layer")] == [8, 4]
    exact = select(scores, 16, "per_neuron")  # 8 rows, exactly K = 2 per row
    for s, c in zip(scores, exact, strict=True):
        assert rows_of(c, s.shape[1]).tolist() == [2] * s.shape[0]
        assert torch.equal(
            s.flatten()[c].view(s.shape[0], 2).sort(1).values, s.topk(2, dim=1).values.sort(1).values
        )
    spill = select(scores, 11, "per_neuron")  # K = 1, three rows get a second entry
    per_row = torch.cat([rows_of(c, s.shape[1]) for s, c in zip(scores, spill, strict=True)])
    assert sorted(per_row.tolist()) == [1] * 5 + [2] * 3


def test_task_estimators_on_a_constructed_case() -> None:
    """With loss = sum(W x), dL/dW = x: two batches give entry A (+1, -1), B (0.9, 0.9), C (1.5, 0)."""
    layer = nn.Linear(3, 1, bias=False)
    nn.init.ones_(layer.weight)
    data = [(torch.tensor([[1.0, 0.9, 1.5]]), None), (torch.tensor([[-1.0, 0.9, 0.0]]), None)]

    def best(estimator: str) -> int:
        scores, used = task_importance(layer, [layer.weight], data, lambda y, _: y.sum(), estimator, 16)
        assert used == 2 and layer.weight.requires_grad  # flags restored
        return int(select(scores, 1, "global")[0])

    assert {e: best(e) for e in ("grad_abs", "fisher", "taylor")} == {"grad_abs": 0, "fisher": 2, "taylor": 1}


def test_agnostic_estimators_mix_and_normalisation() -> None:
    # L1 vs L2: per matrix, w / mean(w) favours M2's 1.2 (2.18 vs 2.0); w^2 / mean(w^2) favours M1's 3 (3.0 vs 2.36).
    weights = [torch.tensor([[1.0, 1.0, 1.0, 3.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.2]])]
    l1 = select(hybrid(None, agnostic_importance(weights, "magnitude"), 0.0), 1, "global")
    l2 = select(hybrid(None, agnostic_importance(weights, "magnitude_l2"), 0.0), 1, "global")
    assert [c.tolist() for c in l1] == [[], [3]] and [c.tolist() for c in l2] == [[3], []]
    # mix 1 follows the task term, 0 the agnostic term.
    task, agnostic = [torch.tensor([[5.0, 1.0, 1.0]])], [torch.tensor([[1.0, 5.0, 1.0]])]
    assert select(hybrid(task, agnostic, 1.0), 1, "global")[0].tolist() == [0]
    assert select(hybrid(task, agnostic, 0.0), 1, "global")[0].tolist() == [1]
    # A matrix with 1000x larger gradients does not take the whole budget.
    loud, quiet = 1000 * torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[5.0, 3.0, 2.0, 1.0]])
    assert [c.tolist() for c in select(hybrid([loud, quiet], None, 1.0), 2, "global")] == [[3], [0]]


ERRORS = [
    ({"budget": 0}, r"peft\.budget=0"),
    ({"budget": 1.5}, r"peft\.budget=1\.5"),
    ({"budget": "half"}, r"peft\.budget='half'"),
    ({"budget": 1e-9}, r"peft\.budget=1e-09 gives 0 entries"),
    ({"importance": {"task": "hessian"}}, r"peft\.importance\.task='hessian'.*grad_abs, fisher, taylor"),
    ({"importance": {"agnostic": "l3"}}, r"peft\.importance\.agnostic='l3'"),
    ({"importance": {"mix": 2}}, r"peft\.importance\.mix=2"),
    ({"importance": {"batches": 0}}, r"peft\.importance\.batches=0"),
    ({"importance": {"lambda": 1}}, r"peft\.importance has unknown keys \['lambda'\]"),
    ({"selection": "topk"}, r"peft\.selection='topk'.*global, per_layer, per_neuron"),
    ({"eligible": ["query"]}, r"peft\.eligible=\['query'\] matches no Linear.*blocks\.N\.attn\.qkv"),
    ({"budget": "rank", "rank_targets": ["q_proj"]}, r"peft\.rank_targets=\['q_proj'\]"),
]


@pytest.mark.parametrize(("kwargs", "message"), ERRORS, ids=[e[1][:24] for e in ERRORS])
def test_bad_settings_are_refused_before_training(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Sparse(**kwargs).apply(tiny_model())


def test_per_neuron_budget_below_one_per_row_is_refused() -> None:
    with pytest.raises(UserError, match=rf"per_neuron .* {ROWS:,} output rows"):
        Sparse(budget=0.001, selection="per_neuron").apply(tiny_model())


def test_training_round_trip(make_cfg, tmp_path: Path) -> None:
    """Short training: few weights change, the rest bit-identical; adapter, merge, bank and eval agree;
    metrics.json and the heatmap say where the budget went."""
    task = Task("binary", ("normal", "opacity"))
    plain, _ = build_model(make_cfg("peft=linear"), task)
    backbone = {k: v.clone() for k, v in plain.state_dict().items()}
    save_file({k: v.contiguous() for k, v in backbone.items()}, str(tmp_path / "backbone.safetensors"))
    cfg = make_cfg(
        "peft=sparse",
        "peft.budget=rank",
        "debug=limit",
        "trainer.max_epochs=1",
        f"backbone.checkpoint={tmp_path}/backbone.safetensors",
    )
    metrics, trained = fit(cfg)
    k = trained.sparse_delta.values.numel()
    selected = {key: n for key, n in metrics.items() if key.startswith("sparse/selected/")}
    # tiny: 4 blocks x (q, k, v, proj, fc1, fc2); budget=rank: LoRA r=4 on qkv = 4 x 4 x (192 + 576)
    assert len(selected) == 24 and sum(selected.values()) == metrics["sparse/selected_total"] == k == 12_288
    assert (Path(cfg.paths.output_dir) / "figures" / "sparse_budget.png").stat().st_size > 0
    images = torch.randn(3, 3, 64, 64)
    expected = trained.eval()(images)

    torch.manual_seed(7)  # another head init: everything must come from the file
    fresh, _ = build_model(cfg, task)
    load_adapter(fresh, metrics["adapter_path"], expect={"strategy": "sparse"})
    torch.testing.assert_close(fresh.eval()(images), expected, rtol=0, atol=0)

    strategy = instantiate(cfg.peft)
    assert strategy.merge(fresh) == 16
    torch.testing.assert_close(fresh(images), expected, rtol=1e-5, atol=1e-5)
    merged = {
        key.replace(".base.", "."): v
        for key, v in fresh.state_dict().items()
        if not key.startswith("sparse_")
    }
    assert merged.keys() == backbone.keys()
    changed = 0
    for name, layer in sparse_layers(fresh).items():
        diff = (merged[f"{name}.weight"] != backbone[f"{name}.weight"]).flatten().nonzero().flatten()
        assert set(diff.tolist()) <= set(layer.delta.segment(layer.slot)[1].tolist())
        changed += diff.numel()
    assert 0 < changed <= k
    others = [
        n
        for n in backbone
        if not n.startswith("head") and not any(n.startswith(f"{s}.") for s in sparse_layers(fresh))
    ]
    assert others and all(torch.equal(merged[n], backbone[n]) for n in others)
    strategy.unmerge(fresh)

    bank = AdapterBank(*build_model(cfg, task))
    bank.add("a", metrics["adapter_path"])
    bank.switch("a")
    torch.testing.assert_close(bank.model(images), expected, rtol=0, atol=0)

    now, logged = evaluate(cfg.paths.output_dir)
    assert now["test/auroc"] == pytest.approx(logged["test/auroc"], abs=1e-6)
