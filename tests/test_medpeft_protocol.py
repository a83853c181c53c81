"""MED-PEFT's protocol knobs the recipe sets: head init trunc-normal std 2e-5, one sigmoid logit + BCE for a
binary task (RSNA), and the recipe's choices of transforms / DICOM rule per foundation model."""

from __future__ import annotations

import math

import pytest
import torch

from src.errors import UserError
from src.models.backbone import create_backbone
from src.tasks import Task
from tests.conftest import compose_train

TINY = {"name": "vit_tiny_patch16_224", "img_size": 32, "model_kwargs": {"patch_size": 8, "depth": 1}}


def test_head_init_is_trunc_normal_with_the_given_std() -> None:
    torch.manual_seed(0)
    model, _ = create_backbone(num_classes=400, head_init_std=2e-5, **TINY)
    w = model.head.weight.detach().double()
    assert abs(w.std().item() / 2e-5 - 1) < 0.02 and abs(w.mean().item()) < 2e-7  # 76,800 draws
    assert torch.equal(model.head.bias, torch.zeros(400))
    default, _ = create_backbone(num_classes=400, **TINY)
    assert default.head.weight.std() > 100 * w.std()  # timm's own init is another scale entirely


def test_sigmoid_binary_head_is_one_logit_with_bce() -> None:
    task = Task("binary", ("normal", "pneumonia"), binary_head="sigmoid")
    assert task.num_outputs == 1
    logits, target = torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 0, 0])
    p = [1 / (1 + math.exp(-z)) for z in (2.0, -1.0, 0.5)]
    bce = -sum(math.log(q) if t else math.log(1 - q) for q, t in zip(p, [1, 0, 0], strict=True)) / 3
    assert task.loss(logits, target).item() == pytest.approx(bce, rel=1e-6)
    torch.testing.assert_close(task.scores(logits), torch.tensor(p))
    torch.testing.assert_close(task.probabilities(logits), torch.tensor([[1 - q, q] for q in p]))
    assert Task("binary", ("a", "b")).num_outputs == 2  # the default stays MeLo's 2-logit softmax
    with pytest.raises(UserError, match=r"task\.binary_head=sigmoid set loss\.label_smoothing=0"):
        Task("binary", ("a", "b"), label_smoothing=0.1, binary_head="sigmoid")


@pytest.mark.parametrize(("model", "protocol"), [("mrm", "medpeft_mrm"), ("cxr_mae", "medpeft_cxr_mae")])
def test_medpeft_recipe_sets_the_papers_protocol(model: str, protocol: str) -> None:
    cfg = compose_train(["experiment=medpeft", f"medpeft.model={model}", "dataset=rsna_pneumonia"])
    assert cfg.dataset.protocol == protocol and cfg.dataset.dicom_intensity == "max255"
    assert cfg.task.binary_head == "sigmoid" and cfg.backbone.head_init_std == 2e-5
