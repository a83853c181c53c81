"""A NaN / inf training loss or gradient stops the run at once, names the step, keeps the last good checkpoint
and marks the MLflow run FAILED."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch

from src.callbacks.nonfinite import NonFiniteGuard, NonFiniteLoss
from src.train import train


def test_exploding_lr_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(make_cfg) -> None:
    # lr 1e6 without clipping: the loss is still finite at step 1 but its gradients are not.
    cfg = make_cfg(
        "optim.lr=1e6",
        "optim.warmup_fraction=0",
        "trainer.gradient_clip_val=null",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        logger="mlflow",
    )
    with pytest.raises(
        NonFiniteLoss, match=r"gradient norm is (nan|inf) at step 1 \(epoch 0, batch 1\)"
    ) as err:
        train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert f"{last} holds the last good state" in str(err.value)
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()

    client = mlflow.MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    run_id = (Path(cfg.paths.output_dir) / "mlflow_run_id.txt").read_text().strip()
    assert client.get_run(run_id).info.status == "FAILED"


def fake_trainer(scaler: object = None) -> SimpleNamespace:
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_idx=3))
    return SimpleNamespace(
        callbacks=[],
        checkpoint_callbacks=[],
        world_size=1,
        global_step=7,
        current_epoch=1,
        fit_loop=loop,
        precision_plugin=SimpleNamespace(scaler=scaler),
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_before_backward(value: float) -> None:
    with pytest.raises(NonFiniteLoss, match=rf"training loss is {value} at step 7 \(epoch 1, batch 3\)"):
        NonFiniteGuard().on_before_backward(fake_trainer(), None, torch.tensor(value))
    NonFiniteGuard().on_before_backward(fake_trainer(), None, torch.tensor(0.5))


def test_fp16_grad_scaler_keeps_its_own_inf_handling() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    weight.grad = torch.tensor([1.0, float("inf")])
    optimizer = torch.optim.SGD([weight], lr=0.1)
    NonFiniteGuard().on_before_optimizer_step(fake_trainer(scaler=object()), None, optimizer)  # no stop
    with pytest.raises(NonFiniteLoss, match="gradient norm is inf"):
        NonFiniteGuard().on_before_optimizer_step(fake_trainer(), None, optimizer)
