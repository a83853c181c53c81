"""Train one model: ``python -m src.train [group=option ...] [key=value ...]``.

Builds the dataset, a timm backbone with a new head, applies the chosen PEFT strategy, trains with Lightning
(one process or DDP), tests the best checkpoint, then (rank 0) writes ``adapter.safetensors``,
``metrics.json`` and ``config.yaml`` into the run dir and logs them to MLflow.
"""

from __future__ import annotations

if __name__ == "__main__":  # config errors in a second, before the heavy imports below (src/entry.py)
    from src.entry import check_config

    check_config("train")

import json
import logging
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.adapter import class_names_json, save_adapter
from src.callbacks.prepare import StrategyPrepare
from src.checkpoint_io import read_checkpoint, remove_partial_writes
from src.config import hydra_entry, instantiate_user, validate_config
from src.data.base import ClassificationDataModule
from src.data.protocol_dataset import decoding_metadata
from src.entry import exit_with_error, log_to_files
from src.errors import Preempted, UserError, as_user_error
from src.figures import write_figures
from src.models.backbone import (
    create_backbone,
    load_report_entries,
    load_report_files,
    remember_load_report,
)
from src.models.module import ClassificationModule
from src.quiet import silence_noise
from src.resume import (
    keep_csv_log,
    read_run_id,
    reopen_run,
    resume_argv,
    resume_checkpoint,
    set_aside_results,
    write_run_id,
)
from src.stats.run import loggable, run_statistics, stats_options, write_splits
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
    model, report = create_backbone(
        name=b.name,
        num_classes=task.num_outputs,
        img_size=b.img_size,
        pretrained=b.pretrained,
        checkpoint=b.checkpoint,
        model_kwargs=OmegaConf.to_container(b.kwargs, resolve=True),
        allow_missing=list(b.get("allow_missing") or []),
        head_init_std=b.get("head_init_std"),
    )
    model = strategy.apply(model)
    remember_load_report(model, report)
    return model, strategy


def backbone_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved backbone config: what rebuilds the frozen weights (adapters, lean checkpoints)."""
    return OmegaConf.to_container(cfg.backbone, resolve=True)


def adapter_metadata(cfg: DictConfig, strategy: Strategy, task: Task, color: str = "gray") -> dict[str, str]:
    return {
        "backbone": cfg.backbone.name,
        "img_size": str(cfg.backbone.img_size),
        "color": color,  # how src.predict decodes images for this adapter (gray / rgb)
        "task": task.type,
        "binary_head": task.binary_head,  # how src.predict turns the head's logits into probabilities
        "dataset": cfg.dataset.name,  # names the adapter's columns in src.predict's CSV
        "class_names": class_names_json(task.class_names),
        **strategy.metadata(),
        # Enough to rebuild the exact model around the adapter later (predict, adapter bank).
        "backbone_config": json.dumps(backbone_config(cfg)),
        "strategy_config": json.dumps(OmegaConf.to_container(cfg.peft, resolve=True)),
    }


def build_trainer(
    cfg: DictConfig, run_id: str | None = None, extra_callbacks: list[L.Callback] | None = None
) -> L.Trainer:
    """``run_id``: an MLflow run to keep logging to (resume)."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    logger = instantiate(cfg.logger, **({"run_id": run_id} if run_id else {})) if cfg.get("logger") else False
    return instantiate(cfg.trainer, callbacks=[*callbacks, *(extra_callbacks or [])], logger=logger)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback  # the first ModelCheckpoint: the best-by-val/auroc one
    if trainer.fast_dev_run or not isinstance(ckpt, ModelCheckpoint) or not ckpt.best_model_path:
        return None
    return ckpt.best_model_path


@dataclass
class Run:
    """Everything one training job is made of; every DDP process builds its own."""

    cfg: DictConfig
    out: Path
    datamodule: ClassificationDataModule
    task: Task
    model: nn.Module
    strategy: Strategy
    module: ClassificationModule
    trainer: L.Trainer
    resume: Path | None  # the checkpoint this run continues from
    resume_step: int | None
    trainable: int
    total: int

    @property
    def mlflow(self) -> MLflowLogger | None:
        return self.trainer.logger if isinstance(self.trainer.logger, MLflowLogger) else None


def build(cfg: DictConfig) -> Run:
    """Data, model, strategy, module and trainer; no side effect beyond the process."""
    validate_config(cfg)
    stats_options(cfg)  # a bad stats.* / task.operating_point fails now, not after training
    cfg = check_tracking(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: ClassificationDataModule = instantiate_user(cfg.dataset)
    datamodule.check()
    datamodule.shuffle_seed = cfg.seed
    task = Task(
        datamodule.task_type,
        datamodule.class_names,
        cfg.loss.label_smoothing,
        OmegaConf.select(cfg, "task.binary_head", default="softmax"),
    )
    model, strategy = build_model(cfg, task)
    trainable, total = count_parameters(model)
    log.info(
        "trainable parameters: %s / %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
    )
    # the strategy's adapter parameters take no weight decay (the one rule of src/optim.py)
    optim = {**OmegaConf.to_container(cfg.optim, resolve=True), "no_weight_decay": strategy.no_weight_decay()}
    module = ClassificationModule(model, task, optim, backbone_config(cfg))
    resume, step, extra = resume_checkpoint(cfg), None, []
    if resume is None:
        # The strategy looks at the batches one process would see (a resumed run has its result in last.ckpt).
        batches = partial(datamodule.train_dataloader, single_process=True)
        extra.append(StrategyPrepare(strategy, batches, task.loss))
    else:
        step = read_checkpoint(resume, module).get("global_step")
        log.info("resuming from %s (step %s)", resume, step)
    trainer = build_trainer(cfg, read_run_id(resume.parents[1]) if resume else None, extra)
    out = Path(cfg.paths.output_dir)
    return Run(cfg, out, datamodule, task, model, strategy, module, trainer, resume, step, trainable, total)


def prepare(run: Run) -> None:
    """Rank 0: the run dir, config.yaml, and the MLflow run (new, or reopened on resume)."""
    if not run.trainer.is_global_zero:
        return
    run.out.mkdir(parents=True, exist_ok=True)
    if run.resume is not None:
        remove_partial_writes(run.resume.parent)
        set_aside_results(run.out, run.resume_step)
    (run.out / "config.yaml").write_text(OmegaConf.to_yaml(run.cfg, resolve=True))
    logger = run.trainer.logger
    if run.resume is not None and run.mlflow is not None:
        reopen_run(run.mlflow, run.resume_step)
    elif run.resume is not None:
        keep_csv_log(logger, run.resume_step)
    elif logger is not None:
        logger.log_hyperparams(OmegaConf.to_container(run.cfg, resolve=True))
        if run.mlflow is not None:
            write_run_id(run.out, run.mlflow.run_id)


def train_and_test(run: Run) -> dict[str, float]:
    """Every process: fit, re-validate the best checkpoint, test it; the scores every process agrees on."""
    trainer, module, datamodule = run.trainer, run.module, run.datamodule
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=run.resume, weights_only=True)
    except SIGTERMException:
        if run.mlflow is not None and trainer.is_global_zero:
            run.mlflow.experiment.set_terminated(run.mlflow.run_id, "KILLED")
        raise Preempted(
            f"stopped by SIGTERM at step {trainer.global_step}; continue with resume=true"
        ) from None
    # Re-validate the chosen checkpoint so every val/* number (not only val/auroc) belongs to it.
    best = best_checkpoint(trainer)
    scores = trainer.validate(
        module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True
    )[0]
    if run.cfg.test:
        scores |= trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True)[0]
    return {k: float(v) for k, v in scores.items()}


def finalise(run: Run, scores: dict[str, float]) -> dict[str, Any]:
    """Rank 0: figures, splits, statistics, adapter, metrics.json, MLflow artifacts; returns the metrics."""
    cfg, out, model, strategy, task = run.cfg, run.out, run.model, run.strategy, run.task
    datamodule, module = run.datamodule, run.module
    extras, files = datamodule.report(out)
    extras, files = {**extras, **load_report_entries(model)}, [*files, *load_report_files(model, out)]
    strategy_extras, strategy_files = strategy.report(model, out)
    extras, files = {**extras, **strategy_extras}, [*files, *strategy_files]
    if module.test_predictions is not None:  # None with test=false, or after ddp_spawn's own processes
        files += write_figures(*module.test_predictions, task, out)
    split_files = write_splits(datamodule, task, out)
    stats, stats_files = run_statistics(
        cfg, datamodule, task, module.test_predictions, module.val_predictions, out
    )
    files += stats_files

    adapter_path = out / "adapter.safetensors"
    metadata = adapter_metadata(cfg, strategy, task, datamodule.color) | decoding_metadata(datamodule)
    adapter_bytes = save_adapter(model, adapter_path, metadata)
    trainable, total = run.trainable, run.total
    metrics: dict[str, Any] = {
        **stats,  # before the logged scores: where both hold a key, the value Lightning logged stands
        **scores,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": 100 * trainable / total,
        "adapter_bytes": adapter_bytes,
        "adapter_path": str(adapter_path),
        "best_checkpoint": best_checkpoint(run.trainer),
        "run_dir": str(out),
        "mlflow_run_id": run.mlflow.run_id if run.mlflow is not None else None,
        **extras,
    }
    write_json(out / "metrics.json", metrics)
    if run.mlflow is not None:
        run.mlflow.log_metrics(
            {k: metrics[k] for k in ("trainable_params", "trainable_pct", "adapter_bytes")}
            | loggable({k: v for k, v in stats.items() if k not in scores})
        )
        run.mlflow.log_files([adapter_path, out / "metrics.json", out / "config.yaml", *files])
        run.mlflow.log_files(split_files, "splits")
        run.mlflow.log_datasets(
            datamodule.datasets, datamodule.name, OmegaConf.to_container(cfg.dataset, resolve=True)
        )
    print(format_summary(metrics), flush=True)
    return metrics


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns the metrics written to metrics.json."""
    return fit(cfg)[0]


def fit(cfg: DictConfig) -> tuple[dict[str, Any], nn.Module]:
    """As :func:`train`, also returning the model (with the best checkpoint's weights loaded).

    build -> prepare -> train_and_test -> finalise (the shape of lightning-hydra-template): every DDP
    process builds and trains; only rank 0 writes the run dir and logs to MLflow. Other ranks return the
    scores (the same numbers as rank 0's).
    """
    run = build(cfg)
    prepare(run)
    scores = train_and_test(run)
    if not run.trainer.is_global_zero:
        return scores, run.model
    return finalise(run, scores), run.model


@hydra_entry("train")
def main(cfg: DictConfig) -> float | None:
    silence_noise()
    try:
        metrics = train(cfg)
    except Preempted as err:
        log_to_files(log, str(err))
        print(f"preempted: {err}", file=sys.stderr, flush=True)
        raise SystemExit(143) from None  # 128 + SIGTERM, as schedulers expect from a terminated job
    except Exception as err:
        if (user := as_user_error(err)) is None:
            raise
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            log_to_files(log, str(user))  # the sweep prints every failure at its end
            raise user from None  # one failed job: the sweep callback records it, the sweep goes on
        exit_with_error(log, user, keep_run_dir=bool(cfg.get("resume")))  # resume=... reuses a run dir
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
