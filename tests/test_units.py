"""Small pieces, table-driven: optimizers and schedule, tasks, normalisation, image decoding, MLflow params."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.base import Normalize
from src.data.image_files import read_grayscale
from src.errors import UserError
from src.optim import build_optimizer, warmup_cosine
from src.tasks import Task
from src.tracking.mlflow_logger import MARKER, param_value


def small_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[1].weight.requires_grad_(False)
    return model


PARTIALS = {
    "adamw": ({"_target_": "torch.optim.AdamW", "_partial_": True, "betas": [0.9, 0.95]}, torch.optim.AdamW),
    "adam": ({"_target_": "torch.optim.Adam", "_partial_": True}, torch.optim.Adam),
    "sgd": ({"_target_": "torch.optim.SGD", "_partial_": True, "momentum": 0.9}, torch.optim.SGD),
}


@pytest.mark.parametrize("name", list(PARTIALS))
def test_optimizers_see_only_trainable_params_and_skip_decay_on_vectors(name: str) -> None:
    node, cls = PARTIALS[name]
    opt = build_optimizer(small_model(), node, lr=0.1, weight_decay=0.05)
    assert isinstance(opt, cls) and opt.defaults["lr"] == 0.1
    groups = {g["name"]: g for g in opt.param_groups}
    assert [p.shape for p in groups["decay"]["params"]] == [(3, 4)] and groups["decay"][
        "weight_decay"
    ] == 0.05
    assert [p.shape for p in groups["no_decay"]["params"]] == [(3,), (3,)]
    assert groups["no_decay"]["weight_decay"] == 0.0


def test_optimizer_errors() -> None:
    with pytest.raises(UserError, match=r"optim\.optimizer\._target_='torch\.optim\.Lion'"):
        build_optimizer(small_model(), {"_target_": "torch.optim.Lion", "_partial_": True})
    with pytest.raises(UserError, match="_partial_: true"):
        build_optimizer(small_model(), {"_target_": "torch.optim.SGD"})
    frozen = small_model().requires_grad_(False)
    with pytest.raises(UserError, match="no trainable parameters"):
        build_optimizer(frozen, PARTIALS["sgd"][0])


def test_warmup_then_cosine_to_min_lr() -> None:
    opt = build_optimizer(small_model(), PARTIALS["adamw"][0], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=10, min_lr=0.01)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.1 and lrs[9] < lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)


def test_tasks_losses_and_scores() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    binary = Task("binary", ("no", "yes"))
    torch.testing.assert_close(binary.scores(logits), logits.softmax(-1)[:, 1])
    smooth = Task("multiclass", ("a", "b"), label_smoothing=0.1)
    assert smooth.loss(logits, torch.tensor([0, 1])) > binary.loss(logits, torch.tensor([0, 1]))
    multi = Task("multilabel", ("a", "b"))
    torch.testing.assert_close(multi.scores(logits), logits.sigmoid())
    expanded = multi.expand({"auroc": torch.tensor(0.5), "auroc_per_class": torch.tensor([0.4, 0.6])}, "test")
    assert expanded == {
        "test/auroc": 0.5,
        "test/auroc/a": pytest.approx(0.4),
        "test/auroc/b": pytest.approx(0.6),
    }


@pytest.mark.parametrize(
    ("kind", "names", "message"),
    [
        ("ordinal", ("a", "b"), "unknown"),
        ("binary", ("a", "b", "c"), "exactly 2"),
        ("multiclass", ("a",), "at least 2"),
    ],
)
def test_task_validation(kind: str, names: tuple, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Task(kind, names)


def test_normalize_grayscale_and_rgb() -> None:
    norm = Normalize([0.5] * 3, [0.5] * 3)
    gray = norm(torch.full((4, 5), 255, dtype=torch.uint8))
    rgb = norm(torch.zeros(4, 5, 3, dtype=torch.uint8))
    assert gray.shape == rgb.shape == (3, 4, 5)
    assert torch.all(gray == 1.0) and torch.all(rgb == -1.0)


def test_sixteen_bit_png_uses_its_range(tmp_path: Path) -> None:
    pixels = np.linspace(1000, 5000, 64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    image = read_grayscale(path, 8)
    assert image.dtype == torch.uint8 and image.min() == 0 and image.max() == 255


def test_mlflow_params_longer_than_mlflow_allows_are_marked() -> None:
    assert param_value("k", "x" * 300) == "x" * 300
    cut = param_value("k", "y" * 7000)
    assert len(cut) == 6000 and cut.endswith(MARKER)
