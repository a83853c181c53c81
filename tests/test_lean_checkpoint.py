"""Lean checkpoints: no frozen tensor on disk, an exact round trip, and a refused backbone mismatch."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from src.checkpoint_io import read_checkpoint
from src.config import PROJECT_ROOT
from src.data.synthetic import SyntheticDataModule
from src.errors import UserError
from src.eval import evaluate
from src.lean_checkpoint import KEY, make_lean, restore_frozen
from src.models.module import ClassificationModule
from src.tasks import Task
from src.train import backbone_config, build_model, fit, train

POCKET = PROJECT_ROOT / "weights" / "pocket_tiny.safetensors"


def module_for(cfg, seed: int) -> ClassificationModule:
    dm = SyntheticDataModule(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    task = Task(dm.task_type, dm.class_names)
    torch.manual_seed(seed)  # heads and adapters start differently for different seeds
    model, _ = build_model(cfg, task)
    return ClassificationModule(model, task, dict(cfg.optim), backbone_config(cfg))


@pytest.mark.parametrize("peft", ["lora", "sparse", "linear", "bitfit", "full"])
def test_lean_state_holds_trainable_tensors_and_buffers_only_and_round_trips(peft: str, make_cfg) -> None:
    cfg = make_cfg(f"peft={peft}")
    trained = module_for(cfg, seed=0)
    with torch.no_grad():  # every trainable tensor moves away from its init (LoRA's B starts at zero)
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    params = dict(trained.named_parameters())
    frozen = {n for n, p in params.items() if not p.requires_grad}
    ckpt = {"state_dict": trained.state_dict()}
    make_lean(trained, ckpt, backbone_config(cfg))

    buffers = set(trained.state_dict()) - set(params)
    assert set(ckpt["state_dict"]) == {n for n, p in params.items() if p.requires_grad} | buffers
    assert (peft == "full") == (not frozen) and not frozen & set(ckpt["state_dict"])
    assert ckpt[KEY]["backbone"]["checkpoint"] == str(POCKET)

    ckpt = torch.load(_saved(ckpt, cfg), weights_only=True)  # as Lightning reads it back
    fresh = module_for(cfg, seed=1)
    restore_frozen(fresh, ckpt)
    fresh.load_state_dict(ckpt["state_dict"])  # strict: a complete state dict again
    images = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(fresh.eval()(images), trained.eval()(images), rtol=0, atol=0)


def _saved(ckpt: dict, cfg) -> Path:
    path = Path(cfg.paths.output_dir) / "lean.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def test_other_frozen_weights_or_another_strategy_are_refused(make_cfg) -> None:
    cfg = make_cfg("peft=lora")
    trained = module_for(cfg, seed=0)
    ckpt = {"state_dict": trained.state_dict()}
    make_lean(trained, ckpt, backbone_config(cfg))

    moved = module_for(cfg, seed=0)
    with torch.no_grad():  # one frozen weight changes by 1 %
        moved.model.blocks[2].mlp.fc1.weight[0, 0] *= 1.01
    with pytest.raises(UserError, match=r"checksum .* the weights file changed since the run") as err:
        restore_frozen(moved, dict(ckpt, state_dict=dict(ckpt["state_dict"])), "x.ckpt", backbone_config(cfg))
    assert "backbone.checkpoint=" in str(err.value) and "silently wrong" in str(err.value)

    other = make_cfg("peft=lora", "backbone.checkpoint=null")
    with pytest.raises(UserError, match=r"checkpoint: run had '.*pocket_tiny.safetensors', now None"):
        restore_frozen(module_for(other, 0), dict(ckpt), "x.ckpt", backbone_config(other))
    with pytest.raises(UserError, match=r"x\.ckpt does not fit this model: .* another backbone or strategy"):
        restore_frozen(module_for(make_cfg("peft=bitfit"), 0), dict(ckpt), "x.ckpt")


def test_eval_and_resume_from_lean_checkpoints(make_cfg, tmp_path: Path) -> None:
    backbone = tmp_path / "backbone.safetensors"
    shutil.copy(POCKET, backbone)
    cfg = make_cfg("debug=limit", "trainer.max_epochs=1", f"backbone.checkpoint={backbone}")
    _, model = fit(cfg)
    run = Path(cfg.paths.output_dir)
    last = run / "checkpoints" / "last.ckpt"
    raw = torch.load(last, map_location="cpu", weights_only=True)
    frozen = {f"model.{n}" for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(raw["state_dict"])
    assert raw["optimizer_states"] and raw["lr_schedulers"] and raw["loops"]
    assert raw[KEY]["backbone"]["name"] == cfg.backbone.name
    frozen_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    assert last.stat().st_size < frozen_bytes / 4

    # The model in memory (trained one epoch: last.ckpt is its end state) tested without any checkpoint.
    dm = SyntheticDataModule(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    module = ClassificationModule(model, Task(dm.task_type, dm.class_names), dict(cfg.optim))
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    in_memory = L.Trainer(**quiet).test(module, dm, verbose=False)[0]
    now, _ = evaluate(run, "last")
    assert now == pytest.approx(in_memory, rel=0, abs=0)

    state = load_file(str(backbone))  # the backbone file changes after the run
    state["blocks.0.attn.qkv.weight"][0, 0] += 1e-3
    save_file(state, str(backbone))
    with pytest.raises(UserError, match=r"last\.ckpt holds only the trained tensors; .* checksum"):
        evaluate(run, "last")
    with pytest.raises(UserError, match=r"last\.ckpt holds only the trained tensors"):
        read_checkpoint(last, module_for(cfg, seed=0))
    (run / "metrics.json").unlink()
    with pytest.raises(UserError, match=r"last\.ckpt holds only the trained tensors"):
        train(OmegaConf.merge(cfg, {"resume": str(run)}))
