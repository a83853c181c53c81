"""Mistakes caught before any heavy work, each as one paragraph naming the key or file (the older checks —
rank, target modules, patch size, adapter/bank mismatches — are tested in test_cli, test_strategies,
test_bank, test_train and test_safe_loading)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from src.adapter import FORMAT, class_names_json
from src.bank import AdapterBank
from src.config import validate_config
from src.errors import UserError
from src.models.backbone import create_backbone
from src.strategies.linear import LinearProbe
from src.train import main
from tests.conftest import TINY


def test_adapter_whose_head_and_class_names_disagree_is_refused(tmp_path: Path) -> None:
    model, _ = create_backbone(num_classes=2, **TINY)
    path = tmp_path / "mixed.safetensors"
    head = {"head.weight": torch.zeros(3, 192), "head.bias": torch.zeros(3)}
    save_file(head, str(path), metadata={"format": FORMAT, "class_names": class_names_json(["a", "b"])})
    with pytest.raises(UserError, match=r"names 2 classes \(a, b\) but its head has 3 outputs"):
        AdapterBank(model, LinearProbe()).add("mixed", path)


@pytest.mark.parametrize("every", [-1, "often"])
def test_checkpoint_interval_must_be_a_whole_number(every: object, make_cfg) -> None:
    with pytest.raises(UserError, match=r"callbacks\.last_checkpoint\.every_n_train_steps="):
        validate_config(make_cfg(f"callbacks.last_checkpoint.every_n_train_steps={every}"))


def test_user_error_raised_inside_instantiate_is_still_one_line(make_cfg) -> None:
    # Hydra's instantiate wraps the dataset constructor's UserError in an InstantiationException.
    with pytest.raises(SystemExit) as exit_info:
        main(make_cfg("dataset.findings=[nope]"))
    message = str(exit_info.value.code)
    assert message.startswith("error: dataset.findings=['nope']") and "\n" not in message
