"""End-to-end training through the composed config: every strategy, every task type, outputs, MLflow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import mlflow
import pytest
import torch
from safetensors.torch import save_file

from src.adapter import load_adapter, read_adapter, read_metadata
from src.data.synthetic import SyntheticDataModule
from src.errors import UserError
from src.models.module import ClassificationModule
from src.tasks import Task
from src.train import build_model, train

STRATEGIES = ["full", "linear", "lora", "dora", "lora_medpeft", "bitfit", "sparse"]
TASKS = ["synthetic", "synthetic_multiclass", "synthetic_multilabel"]


@pytest.mark.parametrize("peft", STRATEGIES)
def test_fast_dev_run_every_strategy(peft: str, make_cfg) -> None:
    metrics = train(make_cfg(f"peft={peft}", "debug=fdr"))
    # the adapter file holds exactly what trained (plus integer positions for sparse), nothing frozen
    _, tensors = read_adapter(metrics["adapter_path"])
    floats = sum(t.numel() for t in tensors.values() if t.is_floating_point())
    assert floats == metrics["trainable_params"] > 0


@pytest.mark.parametrize("dataset", TASKS)
def test_fast_dev_run_every_task_type(dataset: str, make_cfg) -> None:
    metrics = train(make_cfg(f"dataset={dataset}", "debug=fdr"))
    meta, tensors = read_adapter(metrics["adapter_path"])
    outputs = {"synthetic": 2, "synthetic_multiclass": 4, "synthetic_multilabel": 3}[dataset]
    assert tensors["head.weight"].shape[0] == len(json.loads(meta["class_names"])) == outputs
    if dataset.endswith("multilabel"):
        assert {"test/auroc/opacity", "test/auroc/cavity", "test/auroc/effusion"} <= set(metrics)


def test_run_dir_outputs(make_cfg) -> None:
    cfg = make_cfg("debug=limit")
    metrics = train(cfg)
    # Seeded: 2 short epochs of LoRA on the pocket backbone already find the opacities (0.82 measured;
    # 32 test images, ~10 positives: chance 0.5 is ~4 standard errors below 0.7).
    assert metrics["test/auroc"] >= 0.7
    out = Path(cfg.paths.output_dir)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert metrics["best_checkpoint"] and Path(metrics["best_checkpoint"]).is_file()
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("trainable_params", "total_params", "val/auroc", "test/auroc", "test/acc"):
        assert key in on_disk
    assert "rank: 4" in (out / "config.yaml").read_text()
    meta = read_metadata(out / "adapter.safetensors")
    assert meta["strategy"] == "lora" and meta["rank"] == "4" and meta["backbone"] == cfg.backbone.name
    assert json.loads(meta["class_names"]) == ["normal", "opacity"]


def build(cfg):
    dm = SyntheticDataModule(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    task = Task(dm.task_type, dm.class_names)
    return dm, task, build_model(cfg, task)


def test_lora_training_keeps_every_backbone_weight_bit_identical(make_cfg) -> None:
    cfg = make_cfg("debug=limit", "callbacks=none")
    dm, task, (model, _) = build(cfg)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    module = ClassificationModule(model, task, dict(cfg.optim))
    L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        module, dm
    )
    assert frozen and all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    changed = [n for n, p in model.named_parameters() if n in trained and not torch.equal(p, trained[n])]
    assert any("lora_B" in n for n in changed) and any(n.startswith("head") for n in changed)


@pytest.mark.parametrize("peft", ["lora", "lora_medpeft", "bitfit"])
def test_adapter_round_trip_gives_the_same_logits(peft: str, make_cfg, tmp_path: Path) -> None:
    # The adapter holds only trained tensors, so the fresh model must share the backbone: pin it by file.
    base = make_cfg("peft=linear")  # a plain timm state dict, no LoRA wrappers in the names
    _, task, (model, _) = build(base)
    backbone_file = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(backbone_file))

    cfg = make_cfg(f"peft={peft}", "debug=limit", f"backbone.checkpoint={backbone_file}")
    metrics = train(cfg)
    images = torch.randn(4, 3, 64, 64)

    torch.manual_seed(123)  # a different init of LoRA and head than the trained run had
    fresh, _ = build_model(cfg, task)
    fresh.eval()
    before = fresh(images)
    meta = load_adapter(
        fresh, metrics["adapter_path"], expect={"strategy": peft, "backbone": cfg.backbone.name}
    )
    after = fresh(images)
    assert meta["task"] == "binary"
    assert not torch.allclose(before, after)

    # The checkpoint is lean (src/lean_checkpoint.py): it holds all but the frozen backbone weights, which the
    # reference takes from the same backbone file.
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    reference, _ = build_model(cfg, task)
    missing, unexpected = reference.load_state_dict(
        {k.removeprefix("model."): v for k, v in ckpt.items() if k.startswith("model.")}, strict=False
    )
    assert not unexpected and set(missing) == {
        n for n, p in reference.named_parameters() if not p.requires_grad
    }
    torch.testing.assert_close(after, reference.eval()(images), rtol=0, atol=0)


def test_adapter_mismatch_is_refused(make_cfg) -> None:
    metrics = train(make_cfg("debug=fdr"))
    cfg = make_cfg()
    _, _, (model, _) = build(cfg)
    with pytest.raises(UserError, match="rank: file has '4', model has '8'"):
        load_adapter(model, metrics["adapter_path"], expect={"rank": "8"})


def test_mlflow_run_gets_params_metrics_and_artifacts(make_cfg, tmp_path: Path) -> None:
    long_tag = "t" * 300
    cfg = make_cfg("debug=limit", f"tags=[{long_tag}]", logger="mlflow")
    metrics = train(cfg)
    client = mlflow.MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.data.params["tags"] == f"[{long_tag}]"  # not cut at 250 characters
    assert run.data.params["peft.rank"] == "4"
    assert run.data.tags["peft"] == "lora" and run.data.tags["dataset"] == "synthetic"
    assert run.data.metrics["test/auroc"] == pytest.approx(metrics["test/auroc"])
    assert "val/auroc" in run.data.metrics and "train/loss_epoch" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "val/auroc")
    assert len(history) == 3  # one per epoch, then the best checkpoint re-validated
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter.safetensors", "metrics.json", "config.yaml", "backbone_load.json"} <= artifacts
    assert "predictions_test.csv" in artifacts
    splits = {a.path for a in client.list_artifacts(run.info.run_id, "splits")}
    assert splits == {"splits/train.csv", "splits/val.csv", "splits/test.csv"}
    for key in ("test/auroc_ci_low", "test/auroc_ci_high", "test/op_sensitivity", "test/ece"):
        assert run.data.metrics[key] == pytest.approx(metrics[key])
    assert run.info.status == "FINISHED"
    # For MLflow 3's UI: the training view, a distinct name, hyper-parameters without machine paths, the data
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert re.fullmatch(r"lora_r4_s42_\d{4}-\d{6}", run.info.run_name)
    assert not [k for k in run.data.params if k.startswith("paths.") or k.endswith("dirpath")]
    assert run.data.tags["local.paths.output_dir"] == cfg.paths.output_dir
    assert run.data.tags["backbone"] == "pocket tiny, 64 px, 4 blocks, 8 px patches (vit_tiny_patch16_224)"
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert {split: json.loads(d.profile)["num_rows"] for split, d in inputs.items()} == {
        "train": cfg.dataset.sizes.train,
        "val": cfg.dataset.sizes.val,
        "test": cfg.dataset.sizes.test,
    }
    assert {d.name for d in inputs.values()} == {"synthetic"} and len(
        {d.digest for d in inputs.values()}
    ) == 3


def test_csv_logger(make_cfg) -> None:
    cfg = make_cfg("debug=limit", logger="csv")
    train(cfg)
    assert (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").is_file()


def test_fast_dev_run_with_mlflow_logs_nothing_and_does_not_fail(make_cfg) -> None:
    # Lightning swaps the logger for a dummy under fast_dev_run; the run must still finish cleanly.
    metrics = train(make_cfg("debug=fdr", logger="mlflow"))
    assert metrics["mlflow_run_id"] is None
