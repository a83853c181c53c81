"""Every paper recipe (conf/experiment/) composes to its paper's protocol and builds the model it describes:
trainable count, share and adapter size checked on the meta device (ViT-B/16 without memory or weights)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from src.adapter import adapter_tensors
from src.config import PROJECT_ROOT, validate_config
from src.errors import UserError
from src.optim import build_optimizer
from src.strategies import count_parameters
from src.tasks import Task
from src.train import build_model, train
from tests.conftest import CONF, compose_train, recorded_test_cases
from tests.test_datasets_layouts import make_rsna

VIT_B = 85_798_656  # ViT-B/16 at 224 px without a head (timm's 86,567,656 minus the 1k head)
POS_384 = (577 - 197) * 768  # the longer position embedding at 384 px
HEAD = {"sz_cxr": 2, "blood_cells": 4, "nih_cxr14": 14, "inbreast": 2, "chexpert": 5, "rsna_pneumonia": 2}


def qv_lora(rank: int) -> int:
    """LoRA on query and value of 12 blocks: 12 x 2 x (768 r + r 768) (MeLo: 147,456 at r=4)."""
    return 12 * 2 * 2 * 768 * rank


def head(dataset: str) -> int:
    return 768 * HEAD[dataset] + HEAD[dataset]


def build(overrides: list[str], tmp_path: Path) -> tuple[DictConfig, torch.nn.Module]:
    """The recipe's config (resolved) and its model on the meta device, without its checkpoint."""
    cfg = compose_train(overrides, tmp_path)
    OmegaConf.resolve(cfg)
    datamodule = instantiate(cfg.dataset)
    task = Task(datamodule.task_type, datamodule.class_names, cfg.loss.label_smoothing)
    with open_dict(cfg):
        cfg.backbone.checkpoint = None
    with torch.device("meta"):
        model, _ = build_model(cfg, task)
    return cfg, model


def counts(model: torch.nn.Module) -> tuple[int, int, float, int]:
    """(trainable, total, trainable %, bytes of the tensors adapter.safetensors stores)."""
    trainable, total = count_parameters(model)
    adapter = sum(t.numel() * t.element_size() for t in adapter_tensors(model).values())
    return trainable, total, 100 * trainable / total, adapter


def sweep(experiment: str) -> list[dict[str, str]]:
    """The jobs of a multirun recipe: the Cartesian product of its hydra.sweeper.params."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    return [dict(zip(params, combo, strict=True)) for combo in itertools.product(*params.values())]


# ---------------------------------------------------------------------------------------------- MeLo
MELO = {  # dataset: (img_size, weights tag, lr, batch, label smoothing)
    "sz_cxr": (224, "augreg_in21k_ft_in1k", 1e-3, 16, 0.1),
    "blood_cells": (224, "augreg_in21k_ft_in1k", 1e-3, 16, 0.1),
    "nih_cxr14": (384, "orig_in21k_ft_in1k", 1e-3, 128, 0.0),
    "inbreast": (384, "orig_in21k_ft_in1k", 3e-5, 8, 0.1),
}


@pytest.mark.parametrize("dataset", list(MELO))
def test_melo_recipe_builds_melo_model_and_protocol(dataset: str, tmp_path: Path) -> None:
    cfg, model = build(["experiment=melo", f"dataset={dataset}"], tmp_path)
    size, tag, lr, batch, smoothing = MELO[dataset]
    assert cfg.backbone.name == f"vit_base_patch16_{size}.{tag}" and cfg.dataset.image_size == size
    assert (cfg.optim.optimizer._target_, cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_fraction) == (
        "torch.optim.Adam",
        lr,
        1e-6,
        0,
    )
    assert cfg.optim.weight_decay == 0 and cfg.trainer.max_epochs == 20
    # every MeLo dataloader normalises with ImageNet's mean / std
    assert list(cfg.dataset.mean) == [0.485, 0.456, 0.406] and list(cfg.dataset.std) == [0.229, 0.224, 0.225]
    # MeLo's loaders: whole image resized (no crop), its resize rule, a flip except for blood cells
    assert cfg.dataset.crop_margin == 0 and cfg.dataset.resize == ("tensor" if size == 224 else "pil")
    assert cfg.dataset.hflip == (dataset != "blood_cells")
    assert cfg.dataset.batch_size == batch and cfg.loss.label_smoothing == smoothing
    assert (cfg.peft.targets, cfg.peft.rank, cfg.peft.alpha) == ("qv", 4, 4)
    trainable, total, pct, adapter = counts(model)
    assert trainable == qv_lora(4) + head(dataset) and qv_lora(4) == 147_456
    assert total == VIT_B + (POS_384 if size == 384 else 0) + trainable
    assert 0.17 < pct < 0.19  # MeLo: ~0.17 % (0.173 % for 2 classes at 224 px)
    assert adapter == 4 * trainable and 0.59e6 < adapter < 0.64e6  # MeLo: ~0.5 MB per task


def test_melo_table_runs_every_strategy_on_every_dataset() -> None:
    jobs = sweep("melo_table")
    assert {(j["dataset"], j["peft"]) for j in jobs} == set(
        itertools.product(MELO, ["lora_melo", "full", "linear"])
    )


# ------------------------------------------------------------------------------------------ MED-PEFT
DATASETS = ["nih_cxr14", "chexpert", "rsna_pneumonia"]
LABELS = {"1pct": 0.01, "10pct": 0.1, "100pct": 1.0}
# MED-PEFT's recommended LoRA settings: (model, dataset) -> lr (MRM, SGD) or base lr (CXR-MAE) / rank / epochs
# at 1 %, 10 %, 100 % of the labels
MEDPEFT_LORA = {
    ("mrm", "nih_cxr14"): [(0.05, 4, 100), (0.05, 8, 100), (0.2, 32, 100)],
    ("mrm", "chexpert"): [(0.02, 4, 100), (0.05, 16, 100), (0.01, 32, 100)],
    ("mrm", "rsna_pneumonia"): [(0.01, 4, 100), (0.01, 32, 100), (0.01, 32, 100)],
    ("cxr_mae", "nih_cxr14"): [(3e-3, 4, 400), (1e-3, 8, 200), (3e-3, 32, 100)],
    ("cxr_mae", "chexpert"): [(3e-3, 4, 400), (5e-3, 8, 100), (3e-3, 32, 100)],
    ("cxr_mae", "rsna_pneumonia"): [(3e-3, 4, 100), (5e-3, 8, 100), (5e-3, 32, 100)],
}
MEDPEFT_FFT = {"mrm": (1e-2, 200), "cxr_mae": (5e-4, 400)}
FOUNDATION = {  # optimizer, weight decay, layer decay, lr scaling by batch / 256, normalisation mean
    "mrm": ("torch.optim.SGD", 0.0, None, 1.0, 0.4978),
    "cxr_mae": ("torch.optim.AdamW", 0.05, 0.65, 64 / 256, 0.4785),
}


def expected_row(model: str, peft: str, dataset: str, labels: str) -> tuple[float, int, int]:
    if peft == "full":
        return (*MEDPEFT_FFT[model][:1], 4, MEDPEFT_FFT[model][1])
    return MEDPEFT_LORA[(model, dataset)][list(LABELS).index(labels)]


@pytest.mark.parametrize(
    ("experiment", "peft"), [("medpeft", "lora_medpeft"), ("medpeft", "full"), ("shpeft", "sparse_shpeft")]
)
def test_medpeft_recipe_encodes_the_papers_table(experiment: str, peft: str, tmp_path: Path) -> None:
    overrides = [f"experiment={experiment}"] + (["peft=full"] if peft == "full" else [])
    cfg = compose_train(overrides, tmp_path)
    assert cfg.peft.name == peft and cfg.backbone.kwargs.global_pool == "avg"
    assert cfg.backbone.kwargs.drop_path_rate == 0.1 and cfg.backbone.img_size == 224
    # one composition, every row: the lookups follow medpeft.model / labels and the dataset's name
    for model, dataset, labels in itertools.product(FOUNDATION, DATASETS, LABELS):
        cfg.medpeft.model, cfg.medpeft.labels, cfg.dataset.name = model, labels, dataset
        optim_name, wd, layer_decay, lr_scale, mean = FOUNDATION[model]
        lr, rank, epochs = expected_row(
            model, "lora_medpeft" if peft == "sparse_shpeft" else peft, dataset, labels
        )
        assert cfg.optim.lr == pytest.approx(lr * lr_scale), (model, dataset, labels)
        assert (cfg.rank, cfg.trainer.max_epochs) == (rank, epochs), (model, dataset, labels)
        assert (cfg.optim.optimizer._target_, cfg.optim.weight_decay, cfg.optim.layer_decay) == (
            optim_name,
            wd,
            layer_decay,
        )
        assert list(cfg.backbone.mean) == [mean] * 3 and cfg.backbone.checkpoint.endswith(".pth")
        assert cfg.dataset.label_fraction == LABELS[labels]
    assert (cfg.dataset.batch_size, cfg.optim.warmup_epochs, cfg.optim.min_lr) == (64, 5, 1e-6)
    assert cfg.trainer.gradient_clip_val is None
    # the recipe's optimizer node builds the paper's optimizer (MRM: SGD momentum 0.9; CXR-MAE: AdamW)
    for model, cls in (("mrm", torch.optim.SGD), ("cxr_mae", torch.optim.AdamW)):
        cfg.medpeft.model = model
        node = OmegaConf.to_container(cfg.optim.optimizer, resolve=True)
        opt = build_optimizer(
            torch.nn.Linear(2, 2), node, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        assert type(opt) is cls and opt.defaults.get("momentum", 0.9) == 0.9


@pytest.mark.parametrize(
    ("overrides", "dataset", "rank"),
    [
        (["medpeft.labels=1pct"], "nih_cxr14", 4),
        (["medpeft.labels=10pct", "dataset=chexpert"], "chexpert", 16),
        (["medpeft.labels=100pct", "dataset=rsna_pneumonia", "medpeft.model=cxr_mae"], "rsna_pneumonia", 32),
    ],
)
def test_medpeft_lora_trains_qv_lora_fc_norm_and_head(
    overrides: list[str], dataset: str, rank: int, tmp_path: Path
) -> None:
    cfg, model = build(["experiment=medpeft", *overrides], tmp_path)
    assert cfg.peft.rank == rank and cfg.peft.alpha == 32 and cfg.peft.dropout == 0.1
    trainable, total, pct, adapter = counts(model)
    assert trainable == qv_lora(rank) + 2 * 768 + head(dataset)  # + fc_norm (weight, bias)
    assert model.fc_norm.weight.requires_grad and not model.blocks[0].norm1.weight.requires_grad
    assert total == VIT_B + qv_lora(rank) + head(dataset)
    assert pct < 1.0 if rank < 32 else 1.3 < pct < 1.4  # MED-PEFT's "< 1 %" holds up to rank 16
    assert adapter == 4 * trainable


def test_medpeft_fft_trains_everything(tmp_path: Path) -> None:
    _, model = build(["experiment=medpeft", "peft=full"], tmp_path)
    trainable, total, pct, _ = counts(model)
    assert trainable == total == VIT_B + head("nih_cxr14") and pct == 100


def test_shpeft_trains_a_hundredth_of_a_percent_and_the_head(tmp_path: Path) -> None:
    cfg, model = build(["experiment=shpeft", "dataset=rsna_pneumonia"], tmp_path)
    assert cfg.peft.budget == 0.0001
    eligible = 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072)  # qkv, proj, fc1, fc2 of every block
    trainable, _, pct, adapter = counts(model)
    assert trainable == round(1e-4 * eligible) + head("rsna_pneumonia") == 8_493 + 1_538
    assert round(pct, 3) == 0.012
    assert adapter == 4 * trainable + 4 * 8_493  # + the int32 positions of the sparse values


@pytest.mark.parametrize(
    ("experiment", "strategies"),
    [("medpeft_table", ["lora_medpeft", "full"]), ("shpeft_table", ["sparse_shpeft", "full"])],
)
def test_medpeft_and_shpeft_tables_cover_models_datasets_fractions_strategies(
    experiment: str, strategies: list[str]
) -> None:
    jobs = sweep(experiment)
    grid = itertools.product(FOUNDATION, DATASETS, LABELS, strategies)
    keys = ("medpeft.model", "dataset", "medpeft.labels", "peft")
    assert sorted(tuple(j[k] for k in keys) for j in jobs) == sorted(grid)


def test_medpeft_recipe_trains_end_to_end_on_a_fixture_tree(tmp_path: Path) -> None:
    """The CXR-MAE path through Lightning (AdamW, layer decay, warm-up epochs, drop path, fc_norm trained)
    on a tiny RSNA tree, with the pocket ViT standing in for ViT-B."""
    root = make_rsna(tmp_path / "rsna")
    overrides = [
        "experiment=medpeft",
        "medpeft.model=cxr_mae",
        "dataset=rsna_pneumonia",
        f"dataset.root={root}",
        "medpeft.allow_own_splits=true",  # a fixture tree without MED-PEFT's lists
    ]
    pocket = f"backbone.checkpoint={PROJECT_ROOT}/weights/pocket_tiny.safetensors"
    tiny = ["backbone=tiny", pocket, "dataset.batch_size=4", "dataset.num_workers=0"]
    cfg = compose_train([*overrides, *tiny, "debug=fdr", "logger=none"], tmp_path)
    assert (
        cfg.optim.layer_decay == 0.65 and cfg.optim.warmup_epochs == 5 and cfg.peft.also_train == ["fc_norm"]
    )
    metrics = train(cfg)
    assert recorded_test_cases(metrics["run_dir"]) >= 1
    assert (
        metrics["trainable_params"] == 4 * 192 * 32 * 4 + 2 * 192 + 192 + 1
    )  # q/v LoRA r32, fc_norm, head (one sigmoid logit for the binary RSNA task, as MED-PEFT)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=melo"], r"backbone\.pretrained=true .* or backbone\.checkpoint=PATH"),
        (["experiment=medpeft", "backbone.checkpoint=null"], r"would start from random ones"),
        (["experiment=melo", "dataset=chexpert"], r"melo\.chexpert' not found"),
        (["experiment=medpeft", "medpeft.labels=5pct"], r"nih_cxr14\.5pct' not found"),
    ],
)
def test_recipes_refuse_random_weights_and_uncovered_settings(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=message):
        validate_config(compose_train(overrides, tmp_path))
