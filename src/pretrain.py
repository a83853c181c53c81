"""Pretrain the pocket backbone: ``python -m src.pretrain`` (= ``make pretrain``).

Trains the ``tiny`` ViT on an unbounded stream of synthetic radiographs (multilabel: cavity, effusion,
cardiomegaly, line) with the same machinery as ``src.train``, then exports the backbone without its head as
safetensors with metadata (backbone config, pretraining task, seed, steps, images seen, val AUROC, a
checksum of the tensors). The downstream default task (focal opacities) is not among the findings, so the
default run measures transfer.
"""

from __future__ import annotations

if __name__ == "__main__":  # config errors in a second, before the heavy imports below (src/entry.py)
    from src.entry import check_config

    check_config("pretrain")

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch import Tensor, nn

from src.atomic import atomic_write
from src.config import hydra_entry
from src.entry import exit_with_error
from src.errors import UserError
from src.models.backbone import head_parameter_prefixes
from src.quiet import silence_noise
from src.train import fit

log = logging.getLogger(__name__)
FORMAT = "medpeft-backbone/1"


def tensors_checksum(state: dict[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: stable across safetensors versions."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_backbone(model: nn.Module, path: Path, metadata: dict[str, Any]) -> dict[str, str]:
    """Write the backbone (head dropped) atomically; returns the metadata written."""
    head = head_parameter_prefixes(model)
    state = {
        k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(head)
    }
    meta = {"format": FORMAT, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    meta["sha256_tensors"] = tensors_checksum(state)
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return meta


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Train on the stream, export the backbone, return the run's metrics plus the export path."""
    start = time.perf_counter()
    metrics, model = fit(cfg)
    seconds = time.perf_counter() - start
    steps = int(cfg.trainer.max_steps)
    meta = export_backbone(
        model,
        Path(cfg.export),
        {
            "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
            "pretraining_task": {
                "type": cfg.dataset.task,
                "findings": list(cfg.dataset.findings),
                "prevalence": cfg.dataset.prevalence,
                "loss": "bce_with_logits",
            },
            "seed": cfg.seed,
            "data_seed": cfg.dataset.seed,
            "steps": steps,
            "images_seen": steps * int(cfg.dataset.batch_size),
            "val_auroc": metrics.get("val/auroc"),
            "test_auroc": metrics.get("test/auroc"),
            "seconds": round(seconds, 1),
            "mlflow_run_id": metrics.get("mlflow_run_id") or "",
        },
    )
    log.info("pretrained backbone written to %s (sha256 of tensors %s)", cfg.export, meta["sha256_tensors"])
    print(f"pretrained backbone: {cfg.export}  ({seconds / 60:.1f} min, {steps} steps)", flush=True)
    return {**metrics, "export": str(cfg.export), "metadata": meta}


@hydra_entry("pretrain")
def main(cfg: DictConfig) -> None:
    silence_noise()
    try:
        pretrain(cfg)
    except UserError as err:
        exit_with_error(log, err)


if __name__ == "__main__":
    main()
