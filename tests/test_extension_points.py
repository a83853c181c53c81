"""What every strategy answers through its hooks: the weight-decay rule, merging without drift in an adapter
bank, the bank's structure check, its label in tables and sweeps."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from src.adapter import save_adapter
from src.bank import AdapterBank
from src.config import flatten
from src.errors import UserError
from src.optim import build_optimizer
from src.strategies.base import Strategy, settings_rank, table_label
from src.strategies.bitfit import BitFit
from src.strategies.full import FullFineTuning
from src.strategies.linear import LinearProbe
from src.strategies.lora import LoRA
from src.strategies.sparse import Sparse
from src.train import train
from tests.conftest import CONF, TINY, compose_train

ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True}
STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "lora": lambda: LoRA(rank=2, alpha=2),
    "lora_qv": lambda: LoRA(rank=2, alpha=2, targets="qv"),
    "dora": lambda: LoRA(rank=2, alpha=2, options={"use_dora": True}),
    "sparse": lambda: Sparse(budget=0.001),
    "bitfit": BitFit,
    "linear": LinearProbe,
    "full": FullFineTuning,
}
MERGEABLE = ["lora", "lora_qv", "dora", "sparse"]


@pytest.mark.parametrize("layer_decay", [None, 0.65])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_adapter_parameters_take_no_weight_decay_in_every_strategy(
    name: str, layer_decay: float | None, tiny_model
) -> None:
    """The rule (README "Weight decay"), written out from names and shapes: a parameter the strategy added
    (absent from the plain backbone) takes none, nor a vector or bias, nor pos_embed / cls_token; any other
    trainable tensor of the backbone or head (a matrix) takes optim.weight_decay."""
    plain = dict(tiny_model().named_parameters())
    strategy = STRATEGIES[name]()
    model = strategy.apply(tiny_model())
    opt = build_optimizer(
        model, ADAMW, lr=1.0, weight_decay=0.05, layer_decay=layer_decay,
        no_weight_decay=strategy.no_weight_decay(),
    )  # fmt: skip
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(decay_of) == {id(p) for p in trainable.values()}
    added = [n for n in trainable if n not in plain]
    assert bool(added) == (name in MERGEABLE)
    for n, p in trainable.items():
        exempt = n in added or p.ndim <= 1 or n in ("pos_embed", "cls_token")
        assert decay_of[id(p)] == (0.0 if exempt else 0.05), n
    assert decay_of[id(model.head.weight)] == 0.05


def random_adapter(model: nn.Module, seed: int) -> nn.Module:
    """A 'trained' adapter: random values in every trainable tensor, random sparse positions."""
    gen = torch.Generator().manual_seed(seed)
    delta = getattr(model, "sparse_delta", None)
    if delta is not None:
        flat = torch.randperm(delta.starts[-1], generator=gen)[: delta.values.numel()]
        bounds = list(zip(delta.starts, delta.starts[1:], strict=False))
        delta.set_selection([(flat[(flat >= a) & (flat < b)] - a).sort().values for a, b in bounds])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.mark.parametrize("name", MERGEABLE)
def test_bank_merging_task_after_task_leaves_the_backbone_bit_identical(
    name: str, tiny_model, tmp_path: Path
) -> None:
    """Predict's merge=true path: every switch folds one task in; the frozen weights must come back exactly
    (W + Δ − Δ would drift) and every merged output must match that task's unmerged model."""
    torch.manual_seed(0)
    base = {k: v for k, v in tiny_model().state_dict().items() if not k.startswith("head")}
    x = torch.randn(2, 3, 32, 32)
    references = {}
    for i, classes in enumerate((2, 3, 4)):
        model = tiny_model(classes)
        model.load_state_dict(base, strict=False)
        model = random_adapter(STRATEGIES[name]().apply(model), seed=i)
        save_adapter(model, tmp_path / f"t{i}.safetensors", {"class_names": f"{list(range(classes))}"})
        references[f"t{i}"] = model(x).detach()
    strategy, model = STRATEGIES[name](), tiny_model()
    model.load_state_dict(base, strict=False)
    model = strategy.apply(model)
    bank = AdapterBank(model, strategy)
    for task in references:
        bank.add(task, tmp_path / f"{task}.safetensors")
    frozen = {
        n: t.clone() for n, t in [*model.named_parameters(), *model.named_buffers()] if not t.requires_grad
    }
    frozen = {n: t for n, t in frozen.items() if not n.startswith("head") and "indices" not in n}
    for _ in range(4):
        for task, expected in references.items():
            bank.switch(task, merge=True)
            assert bank.merged
            with torch.no_grad():
                torch.testing.assert_close(bank.model(x), expected, rtol=1e-5, atol=1e-5)
    bank.switch("t0")  # unmerged: the frozen weights are the ones loaded, bit for bit
    now = dict([*model.named_parameters(), *model.named_buffers()])
    assert all(torch.equal(now[n], t) for n, t in frozen.items())
    with torch.no_grad():
        torch.testing.assert_close(bank.model(x), references["t0"], rtol=0, atol=0)


def test_bank_checks_the_structure_keys_the_strategy_names(tiny_model, tmp_path: Path) -> None:
    meta = {"backbone": TINY["name"], "img_size": "32", "class_names": "[0, 1]"}
    for i, eligible in enumerate((["qkv"], ["mlp.fc1"])):
        strategy = Sparse(budget=0.001, eligible=eligible, selection="per_layer" if i else "global")
        save_adapter(
            strategy.apply(tiny_model()), tmp_path / f"{i}.safetensors", {**meta, **strategy.metadata()}
        )
    strategy = Sparse(budget=0.001, eligible=["qkv"])
    bank = AdapterBank(strategy.apply(tiny_model()), strategy)
    bank.add("a", tmp_path / "0.safetensors")
    # same number of values, other matrices: the positions would land in the wrong weights
    with pytest.raises(UserError, match=r"eligible 'mlp\.fc1' vs 'qkv'"):
        bank.add("b", tmp_path / "1.safetensors")
    assert "selection" not in strategy.structure_keys()  # how positions were chosen does not matter


@pytest.mark.parametrize(
    ("overrides", "label", "rank"),
    [
        (["peft=lora", "rank=8"], "lora r8", 8),
        (["peft=dora"], "dora r4", 4),
        (["peft=sparse", "rank=2"], "sparse r2", 2),
        (["peft=sparse_shpeft"], "sparse_shpeft 0.01%", None),  # its budget is a fraction, not the rank
        (["peft=bitfit"], "bitfit", None),
        (["peft=full"], "full", None),
    ],
)
def test_tables_and_sweeps_label_each_strategy_as_it_says(
    overrides: list[str], label: str, rank: int | None
) -> None:
    cfg = compose_train(overrides)
    params = {k[len("peft.") :]: v for k, v in flatten(cfg.peft, "peft.").items()}  # MLflow's strings
    assert table_label(params) == label
    assert settings_rank(cfg.peft) == rank
    assert table_label({"_target_": "os.system", "name": "evil"}) == "evil"  # never imports a foreign target


def test_every_parameter_groups_lr_is_logged(make_cfg) -> None:
    """LearningRateMonitor: one lr (and weight decay) column per parameter group, not group 0 only."""
    cfg = make_cfg("debug=limit", "trainer.max_epochs=1", "optim.warmup_fraction=0", logger="csv")
    train(cfg)
    with (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("lr-AdamW/decay")]
    assert len(logged) == 3  # limit_train_batches=3, log_every_n_steps=1
    # both groups follow the cosine from optim.lr; weight decay as the rule says
    assert float(logged[0]["lr-AdamW/decay"]) == pytest.approx(cfg.optim.lr)
    assert all(r["lr-AdamW/decay"] == r["lr-AdamW/no_decay"] for r in logged)
    assert float(logged[0]["lr-AdamW/decay-weight_decay"]) == cfg.optim.weight_decay
    assert float(logged[0]["lr-AdamW/no_decay-weight_decay"]) == 0.0


# What each file dataset composed to before the shared base (conf/dataset/base/files.yaml) existed: the
# common block, and each dataset's own values in it.
COMMON = {
    "color": "gray",
    "hflip": True,
    "label_fraction": 1.0,
    "label_fraction_seed": 0,
    "cache": True,
    "crop_margin": 0.125,
    "on_bad_image": "error",
    "batch_size": 32,
    "num_workers": 2,
}
OWN = {
    "blood_cells": {"color": "rgb"},
    "chexpert": {"num_workers": 4},
    "csv": {},
    "image_folder": {},
    "inbreast": {"batch_size": 16, "num_workers": 4},
    "nih_cxr14": {"num_workers": 4},
    "rsna_pneumonia": {"num_workers": 4},
    "sz_cxr": {"batch_size": 16},
}


@pytest.mark.parametrize("dataset", list(OWN))
def test_file_datasets_compose_the_shared_block_and_hold_only_their_own_keys(dataset: str) -> None:
    cfg = compose_train([f"dataset={dataset}"])
    d = cfg.dataset
    assert {k: d[k] for k in COMMON} == {**COMMON, **OWN[dataset]}
    assert (d.image_size, list(d.mean), list(d.std)) == (
        cfg.backbone.img_size,
        list(cfg.backbone.mean),
        list(cfg.backbone.std),
    )
    assert d.cache_dir == f"{cfg.paths.data_dir}/cache" and d.name == dataset
    own = OmegaConf.load(Path(CONF) / "dataset" / f"{dataset}.yaml")
    restated = {k for k in COMMON if k in own and own[k] == COMMON[k]}
    assert not restated, f"conf/dataset/{dataset}.yaml repeats the base's {restated}"
    assert list(own.defaults) == ["base/files@_here_", "_self_"]


def test_conf_composes_once_resolvers_are_registered_and_roots_at_the_package(monkeypatch, tmp_path) -> None:
    """Importing src.config registers nothing; the project root comes from the package, never from a
    PROJECT_ROOT another tool left in the environment."""
    import importlib

    import src.config

    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path))
    for name in ("project_root", "timm_name", "timm_norm", "linear_scaled_lr", "when_null", "auto_precision"):
        OmegaConf.clear_resolver(name)
    importlib.reload(src.config)
    assert not OmegaConf.has_resolver("project_root")
    src.config.register_resolvers()
    # uses timm_name, when_null, linear_scaled_lr...
    cfg = compose_train(["experiment=medpeft", "medpeft.allow_own_splits=true"])
    root = Path(__file__).resolve().parents[1]
    assert cfg.paths.root_dir == str(root) and cfg.paths.log_dir == str(root / "outputs")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    src.config.validate_config(cfg)  # every interpolation of the composed config resolves


def test_every_imported_package_is_declared() -> None:
    """Each third-party top-level import of src/, tests/ and bench/ maps (through the installed
    distributions' own records) to a requirement in pyproject.toml, runtime or dev."""
    import ast
    import re
    import sys
    from importlib.metadata import packages_distributions

    root = Path(__file__).resolve().parents[1]
    imported: set[str] = set()
    for folder in ("src", "tests", "bench"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    # bench/ scripts import one another by file name; python-gdcm is only compared in bench_dicom.py when
    # installed (GDCM is not a dependency: pylibjpeg was chosen, see src/data/dicom.py).
    local = {"src", "tests", "__future__", *(p.stem for p in (root / "bench").glob("*.py"))}
    optional = {"gdcm"}
    third_party = {m for m in imported - local - optional if m not in sys.stdlib_module_names}
    text = (root / "pyproject.toml").read_text()
    declared = {
        re.split(r"[<>=!~\[; ]", req)[0].lower().replace("_", "-")
        for block in re.findall(r"(?:dependencies|dev) = \[(.*?)\n\]", text, re.S)
        for req in re.findall(r'^\s*"([^"]+)"', block, re.M)
    }
    owners = packages_distributions()
    missing = {
        m: owners.get(m)
        for m in third_party
        if not {d.lower().replace("_", "-") for d in owners.get(m, [m])} & declared
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
