"""Every YAML composes and resolves; top-level knobs interpolate where they should."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.config import PROJECT_ROOT, flatten, validate_config
from src.errors import UserError
from tests.conftest import compose_train

CONF = PROJECT_ROOT / "conf"
# Groups of train.yaml; melo/ belongs to predict.yaml and is composed in tests/test_melo.py.
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "melo"))
OPTIONS = [(g, y.stem) for g in GROUPS for y in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_has_options() -> None:
    expected = {
        "backbone",
        "dataset",
        "peft",
        "trainer",
        "logger",
        "callbacks",
        "paths",
        "debug",
        "experiment",
    }
    assert expected <= set(GROUPS)
    assert all(any(g == group for g, _ in OPTIONS) for group in expected)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_yaml_composes_and_resolves(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"{group}={option}"], tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["rank"] == cfg.rank


def test_readme_command_composes(tmp_path: Path) -> None:
    cfg = compose_train(["dataset=sz_cxr", "peft=lora", "rank=4"], tmp_path)
    assert cfg.peft.rank == 4 and cfg.peft.alpha == 4
    assert cfg.dataset.root.endswith("data/ChinaSet_AllFiles")


@pytest.mark.parametrize("rank", [1, 3, 16, 64])
def test_any_positive_rank_fills_the_strategy(rank: int, tmp_path: Path) -> None:
    cfg = compose_train([f"rank={rank}"], tmp_path)
    assert cfg.peft.rank == rank
    validate_config(cfg)


@pytest.mark.parametrize("rank", [0, -2, "four", 2.5])
def test_bad_rank_is_refused_with_the_key_named(rank: object, tmp_path: Path) -> None:
    cfg = compose_train([f"rank={rank}"], tmp_path)
    with pytest.raises(UserError, match=r"rank="):
        validate_config(cfg)


def test_image_size_follows_the_backbone(tmp_path: Path) -> None:
    cfg = compose_train(["backbone=vit_base", "dataset=synthetic"], tmp_path)
    assert cfg.dataset.image_size == 224
    assert compose_train([], tmp_path).dataset.image_size == 64


def test_flatten_keeps_long_values_whole() -> None:
    long = ["x" * 100] * 5
    flat = flatten({"a": {"b": 1, "c": long}})
    assert flat["a.b"] == "1"
    assert len(flat["a.c"]) > 500
