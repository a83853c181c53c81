"""Train one model: ``python -m src.train [group=option ...] [key=value ...]``.

Builds the dataset, a timm backbone with a new head, applies the chosen PEFT strategy, trains with Lightning,
tests the best checkpoint, then writes ``adapter.safetensors``, ``metrics.json`` and ``config.yaml`` into the
run dir and logs them to MLflow.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.adapter import class_names_json, save_adapter
from src.checkpoint_io import read_checkpoint
from src.config import hydra_entry, instantiate_user, validate_config
from src.data.base import ClassificationDataModule
from src.errors import Preempted, UserError, as_user_error
from src.figures import write_figures
from src.models.backbone import create_backbone
from src.models.module import ClassificationModule
from src.resume import (
    keep_csv_log,
    read_run_id,
    reopen_run,
    resume_argv,
    resume_checkpoint,
    write_run_id,
)
from src.strategies import Strategy, count_parameters
from src.summary import format_summary, write_json
from src.tasks import Task
from src.tracking.mlflow_logger import MLflowLogger
from src.tracking.server import check_tracking

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, task: Task) -> tuple[nn.Module, Strategy]:
    """Backbone + new head, with the strategy applied."""
    strategy: Strategy = instantiate(cfg.peft)
    b = cfg.backbone
    model, _ = create_backbone(
        name=b.name,
        num_classes=task.num_outputs,
        img_size=b.img_size,
        pretrained=b.pretrained,
        checkpoint=b.checkpoint,
        model_kwargs=OmegaConf.to_container(b.kwargs, resolve=True),
    )
    return strategy.apply(model), strategy


def adapter_metadata(cfg: DictConfig, strategy: Strategy, task: Task, color: str = "gray") -> dict[str, str]:
    return {
        "backbone": cfg.backbone.name,
        "img_size": str(cfg.backbone.img_size),
        "color": color,  # how src.predict decodes images for this adapter (gray / rgb)
        "task": task.type,
        "class_names": class_names_json(task.class_names),
        **strategy.metadata(),
        # Enough to rebuild the exact model around the adapter later (predict, adapter bank).
        "backbone_config": json.dumps(OmegaConf.to_container(cfg.backbone, resolve=True)),
        "strategy_config": json.dumps(OmegaConf.to_container(cfg.peft, resolve=True)),
    }


def build_trainer(cfg: DictConfig, run_id: str | None = None) -> L.Trainer:
    """``run_id``: an MLflow run to keep logging to (resume)."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    logger = instantiate(cfg.logger, **({"run_id": run_id} if run_id else {})) if cfg.get("logger") else False
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if trainer.fast_dev_run or not isinstance(ckpt, ModelCheckpoint) or not ckpt.best_model_path:
        return None
    return ckpt.best_model_path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns the metrics written to metrics.json."""
    return fit(cfg)[0]


def fit(cfg: DictConfig) -> tuple[dict[str, Any], nn.Module]:
    """As :func:`train`, also returning the model (with the best checkpoint's weights loaded)."""
    validate_config(cfg)
    cfg = check_tracking(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    datamodule: ClassificationDataModule = instantiate_user(cfg.dataset)
    datamodule.check()
    task = Task(datamodule.task_type, datamodule.class_names, cfg.loss.label_smoothing)
    model, strategy = build_model(cfg, task)
    resume = resume_checkpoint(cfg)
    if resume is None:  # a resumed run takes whatever prepare would set (e.g. sparse indices) from last.ckpt
        datamodule.setup("fit")
        device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
        strategy.prepare(model, datamodule.train_dataloader(), task.loss, device)
    trainable, total = count_parameters(model)
    log.info(
        "trainable parameters: %s / %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
    )

    # the strategy's adapter parameters take no weight decay (the one rule of src/optim.py)
    optim = {**OmegaConf.to_container(cfg.optim, resolve=True), "no_weight_decay": strategy.no_weight_decay()}
    module = ClassificationModule(model, task, optim)
    if resume is not None:
        step = read_checkpoint(resume, module).get("global_step")
        log.info("resuming from %s (step %s)", resume, step)
    trainer = build_trainer(cfg, run_id=read_run_id(resume.parents[1]) if resume else None)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    run_logger = trainer.logger
    if resume is not None and isinstance(run_logger, MLflowLogger):
        reopen_run(run_logger, step)
    elif resume is not None:
        keep_csv_log(run_logger, step)
    elif run_logger is not None:
        run_logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if isinstance(run_logger, MLflowLogger):
            write_run_id(out, run_logger.run_id)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    except SIGTERMException:
        if isinstance(run_logger, MLflowLogger):
            run_logger.experiment.set_terminated(run_logger.run_id, "KILLED")
        raise Preempted(
            f"stopped by SIGTERM at step {trainer.global_step}; continue with resume=true"
        ) from None
    # Re-validate the chosen checkpoint so every val/* number (not only val/auroc) belongs to it.
    best = best_checkpoint(trainer)
    scores = trainer.validate(
        module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True
    )[0]
    if cfg.test:
        scores |= trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True)[0]
    if not trainer.is_global_zero:  # DDP: every process runs this function; rank 0 writes and logs
        return {k: float(v) for k, v in scores.items()}, model

    extras, files = datamodule.report(out)
    strategy_extras, strategy_files = strategy.report(model, out)
    extras, files = {**extras, **strategy_extras}, [*files, *strategy_files]
    if module.test_predictions is not None:  # None with test=false, or after ddp_spawn's own processes
        files += write_figures(*module.test_predictions, task, out)

    adapter_path = out / "adapter.safetensors"
    adapter_bytes = save_adapter(model, adapter_path, adapter_metadata(cfg, strategy, task, datamodule.color))
    metrics: dict[str, Any] = {
        **{k: float(v) for k, v in scores.items()},
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100 * trainable / total,
        "adapter_bytes": adapter_bytes,
        "adapter_path": str(adapter_path),
        "best_checkpoint": best,
        "run_dir": str(out),
        "mlflow_run_id": run_logger.run_id if isinstance(run_logger, MLflowLogger) else None,
        **extras,
    }
    write_json(out / "metrics.json", metrics)
    if isinstance(run_logger, MLflowLogger):
        run_logger.log_metrics(
            {k: metrics[k] for k in ("trainable_params", "trainable_pct", "adapter_bytes")}
        )
        run_logger.log_files([adapter_path, out / "metrics.json", out / "config.yaml", *files])
    print(format_summary(metrics), flush=True)
    return metrics, model


@hydra_entry("train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except Preempted as err:
        log.warning("%s", err)
        print(f"preempted: {err}", file=sys.stderr, flush=True)
        raise SystemExit(143) from None  # 128 + SIGTERM, as schedulers expect from a terminated job
    except Exception as err:
        if (user := as_user_error(err)) is None:
            raise
        log.error("%s", user)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise user from None  # one failed job: the sweep callback records it, the sweep goes on
        raise SystemExit(f"error: {user}") from None
    return metrics.get("val/auroc")


def cli() -> None:
    """``python -m src.train``: finds the run dir that ``resume=...`` continues before Hydra creates one."""
    try:
        sys.argv[1:] = resume_argv(sys.argv[1:])
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    main()


if __name__ == "__main__":
    cli()
