"""Nothing we load can run code: adapters are safetensors only, checkpoints load with weights_only=True, and
a crafted pickle (a __reduce__ that would create a marker file) is refused before anything executes. The
backbone case is tests/test_backbone.py::test_pickle_with_code_is_refused_without_running_it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.adapter import load_adapter, read_adapter
from src.data.synthetic import SyntheticDataModule
from src.errors import UserError
from src.eval import evaluate
from src.models.module import ClassificationModule
from src.tasks import Task
from src.train import build_model, train


class Payload:
    """Unpickling this calls Path.touch(marker): proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def evil(path: Path, marker: Path, how: str = "torch") -> Path:
    payload = {"state_dict": {"w": torch.zeros(1)}, "x": Payload(marker)}
    if how == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.mark.parametrize("how", ["torch", "pickle"])
@pytest.mark.parametrize("name", ["adapter.safetensors", "adapter.pth"])
def test_pickled_adapter_is_refused_unread(name: str, how: str, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = evil(tmp_path / name, marker, how)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_adapter(path)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_adapter(torch.nn.Linear(1, 1), path)
    assert not marker.exists()


def finished_run(make_cfg, tmp_path: Path, *overrides: str) -> Path:
    """A run dir as src.eval expects it (config + metrics), without the cost of training it."""
    cfg = make_cfg(*overrides)
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml", resolve=True)
    (run / "metrics.json").write_text("{}")
    return run


def test_eval_refuses_a_pickle_with_code_and_a_truncated_checkpoint(make_cfg, tmp_path: Path) -> None:
    run = finished_run(make_cfg, tmp_path)
    marker = tmp_path / "payload-ran"
    with pytest.raises(UserError, match="cannot be loaded safely"):
        evaluate(run, str(evil(tmp_path / "evil.ckpt", marker)))
    assert not marker.exists()

    cfg = make_cfg()
    dm = SyntheticDataModule(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    task = Task(dm.task_type, dm.class_names)
    module = ClassificationModule(build_model(cfg, task)[0], task, dict(cfg.optim))
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": module.state_dict()}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut\.ckpt cannot be loaded safely"):
        evaluate(run, str(cut))


def test_resume_refuses_a_pickle_with_code_as_last_ckpt(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("resume=true")
    marker = tmp_path / "payload-ran"
    (Path(cfg.paths.output_dir) / "checkpoints").mkdir(parents=True)
    evil(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(UserError, match=r"last\.ckpt cannot be loaded safely"):
        train(cfg)
    assert not marker.exists()


def test_checkpoint_of_another_model_is_refused(make_cfg, tmp_path: Path) -> None:
    run = finished_run(make_cfg, tmp_path, "rank=4")
    other = make_cfg("rank=8", "dataset=synthetic_multiclass")
    dm = SyntheticDataModule(**{k: v for k, v in other.dataset.items() if k != "_target_"})
    task = Task(dm.task_type, dm.class_names)
    module = ClassificationModule(build_model(other, task)[0], task, dict(other.optim))
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    with pytest.raises(UserError, match=r"does not fit this model: \d+ tensors") as err:
        evaluate(run, str(path))
    assert "another backbone, strategy, rank or class count" in str(err.value)
    assert json.loads((run / "metrics.json").read_text()) == {}
