"""The LightningModule: a classifier, a task (loss + metrics) and an optimizer recipe.

It knows nothing of PEFT strategies: whatever parameters the strategy left trainable are optimised.
The test split's scores and targets are kept (gathered across DDP processes) for the run's figures.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from src.optim import build_optimizer, warmup_cosine, warmup_steps
from src.tasks import Task


class ClassificationModule(L.LightningModule):
    """Trains ``model`` (images -> logits) on ``task``; picks no weights itself."""

    def __init__(self, model: nn.Module, task: Task, optim: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.optim = dict(optim)
        self.save_hyperparameters({"task": task.type, "class_names": list(task.class_names), "optim": optim})
        self.metrics = nn.ModuleDict({stage: task.metrics() for stage in ("val", "test")})
        self._test_batches: list[tuple[Tensor, Tensor]] = []
        self.test_predictions: tuple[Tensor, Tensor] | None = None

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, target = batch
        loss = self.task.loss(self(images), target)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    def _eval_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> None:
        images, target = batch
        logits = self(images)
        self.log(f"{stage}/loss", self.task.loss(logits, target), on_epoch=True, batch_size=len(images))
        scores = self.task.scores(logits)
        target = self.task.metric_target(target)
        self.metrics[stage].update(scores, target)
        if stage == "test":
            self._test_batches.append((scores.detach(), target.detach()))

    def _eval_epoch_end(self, stage: str) -> None:
        computed = self.metrics[stage].compute()
        self.metrics[stage].reset()
        for name, value in self.task.expand(computed, stage).items():
            self.log(name, value, prog_bar=name == f"{stage}/auroc")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_start(self) -> None:
        self._test_batches = []

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        scores, target = (torch.cat(parts) for parts in zip(*self._test_batches, strict=True))
        if self.trainer.world_size > 1:  # every process tested a shard (DistributedSampler pads them equal)
            scores, target = (self.all_gather(t).flatten(0, 1) for t in (scores, target))
        self.test_predictions = (scores.cpu(), target.cpu())
        self._test_batches = []

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = dict(self.optim)
        warmup, min_lr = cfg.pop("warmup_fraction", 0.0), cfg.pop("min_lr", 0.0)
        warmup_epochs = cfg.pop("warmup_epochs", None)
        optimizer = build_optimizer(self.model, **cfg)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = warmup_steps(total, self.trainer.max_epochs, warmup, warmup_epochs)
        scheduler = warmup_cosine(optimizer, total, warmup, min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
