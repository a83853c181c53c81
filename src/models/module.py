"""The LightningModule: a classifier, a task (loss + metrics) and an optimizer recipe.

It knows nothing of PEFT strategies: whatever parameters the strategy left trainable are optimised.
Val and test metrics (loss included) are computed once per epoch over every sample exactly once, in dataset
order, also under DDP (:mod:`src.distributed`); the val and test splits' scores and targets are kept for the
run's figures and statistics (src.stats: the operating point is chosen on val, judged on test).
Checkpoints leave the frozen weights out and record how to rebuild them (:mod:`src.lean_checkpoint`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from src.distributed import gather_in_dataset_order
from src.lean_checkpoint import make_lean, restore_frozen
from src.lr_schedule import start_schedule, warmup_cosine_scheduler
from src.optim import build_optimizer
from src.tasks import Task


class ClassificationModule(L.LightningModule):
    """Trains ``model`` (images -> logits) on ``task``; picks no weights itself.

    ``backbone_config``: the resolved backbone config, recorded in checkpoints as the source of the frozen weights.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        optim: dict[str, Any],
        backbone_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.backbone_config = backbone_config
        self.task = task
        self.optim = dict(optim)
        self.save_hyperparameters({"task": task.type, "class_names": list(task.class_names), "optim": optim})
        self.metrics = nn.ModuleDict({stage: task.metrics() for stage in ("val", "test")})
        for collection in self.metrics.values():
            for metric in collection.values():
                # Fed the gathered, de-duplicated outputs on every rank: torchmetrics' own sync would add
                # the other ranks' copies (and DistributedSampler's padding) again.
                metric.sync_on_compute = metric._to_sync = False
        self._outputs: list[tuple[Tensor, Tensor]] = []  # this epoch's (logits, target) of this process
        # (scores, metric target) of the last val / test run, every sample once, in dataset order.
        self.test_predictions: tuple[Tensor, Tensor] | None = None
        self.val_predictions: tuple[Tensor, Tensor] | None = None

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, target = batch
        loss = self.task.loss(self(images), target)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(images),
            sync_dist=True,
        )
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor]) -> None:
        images, target = batch
        self._outputs.append((self(images).detach(), target.detach()))

    def _eval_epoch_end(self, stage: str) -> None:
        loader = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        parts = [torch.cat(p) for p in zip(*self._outputs, strict=True)] if self._outputs else []
        self._outputs = []
        if not parts:
            return
        logits, target = gather_in_dataset_order(self, parts, loader)
        logits = logits.float()  # bf16 / fp16 runs: loss and scores in fp32
        scores, metric_target = self.task.scores(logits), self.task.metric_target(target)
        metrics = self.metrics[stage]
        metrics.reset()
        metrics.update(scores, metric_target)
        values = {
            f"{stage}/loss": self.task.loss(logits, target),
            **self.task.expand(metrics.compute(), stage),
        }
        metrics.reset()
        for name, value in values.items():
            # The same number on every rank; sync_dist only keeps Lightning's DDP bookkeeping consistent.
            self.log(name, value, prog_bar=name == f"{stage}/auroc", sync_dist=True)
        setattr(self, f"{stage}_predictions", (scores.float().cpu(), metric_target.cpu()))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_start(self) -> None:
        self._outputs = []

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_train_start(self) -> None:
        # Only now is the train loader of this process built (estimated_stepping_batches in
        # configure_optimizers would build it before a resumed run's loader state is loaded, and lose it).
        scheduler = self.lr_schedulers()
        extended = start_schedule(scheduler, self.trainer.estimated_stepping_batches, self.trainer.max_epochs)
        if extended and self.logger is not None:
            self.logger.log_metrics(
                {"train/schedule_steps": float(self.trainer.estimated_stepping_batches)}, self.global_step
            )

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = dict(self.optim)
        warmup, min_lr = cfg.pop("warmup_fraction", 0.0), cfg.pop("min_lr", 0.0)
        warmup_epochs = cfg.pop("warmup_epochs", None)
        optimizer = build_optimizer(self.model, **cfg)
        scheduler = warmup_cosine_scheduler(optimizer, min_lr, warmup, warmup_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        make_lean(self, checkpoint, self.backbone_config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_frozen(self, checkpoint, backbone=self.backbone_config)
