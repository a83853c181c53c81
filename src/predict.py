"""Predict with one frozen backbone and several task adapters:
``python -m src.predict adapters=[a.safetensors,b.safetensors] inputs=[img.png,folder/,scan.dcm]``.

The model is rebuilt from the first adapter's recorded backbone and strategy configs; every adapter goes
into one :class:`~src.bank.AdapterBank`, so switching tasks costs no reload. Images are decoded once and
every adapter runs over them in batches, in the colour mode (gray / rgb) its run was trained in. The CSV has one row per image and one column per
``<adapter>:<class>`` probability (softmax for binary / multiclass, sigmoid for multilabel).
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.adapter import read_metadata
from src.atomic import atomic_write
from src.bank import AdapterBank
from src.config import hydra_entry
from src.data.base import Normalize
from src.data.image_files import DICOM_SUFFIXES, read_image
from src.errors import UserError
from src.melo import melo_to_adapter
from src.models.backbone import create_backbone
from src.tasks import Task

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_SUFFIXES)


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given, folders searched recursively for images and DICOMs; sorted, no duplicates."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"inputs: {path} does not exist.")
    if not found:
        raise UserError(f"inputs={list(inputs)} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return list(dict.fromkeys(found))


def adapter_names(adapters: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """name -> path; a plain list is named by run dir (for ``adapter.safetensors``) or file stem."""
    if isinstance(adapters, Mapping):
        return {str(k): str(v) for k, v in adapters.items()}
    named: dict[str, str] = {}
    for i, path in enumerate(adapters):
        name = Path(path).parent.name if Path(path).name == "adapter.safetensors" else Path(path).stem
        named[name if name not in named else f"{name}_{i}"] = str(path)
    return named


def build_bank(
    adapters: Sequence[str] | Mapping[str, str], backbone_checkpoint: str | None = None
) -> tuple[AdapterBank, dict]:
    """The model of the first adapter, with every adapter loaded into a bank; returns (bank, backbone config)."""
    named = adapter_names(adapters)
    if not named:
        raise UserError("adapters is empty: give at least one adapter.safetensors.")
    first = Path(next(iter(named.values())))
    if not first.is_file():
        raise UserError(f"adapters: {first} does not exist.")
    meta = read_metadata(first)
    if "backbone_config" not in meta:
        raise UserError(f"{first} records no backbone_config; it predates predict support — retrain it.")
    backbone, strategy_config = json.loads(meta["backbone_config"]), json.loads(meta["strategy_config"])
    # The file names the class to build: only our strategies, never an arbitrary callable from a file.
    if not str(strategy_config.get("_target_", "")).startswith("src.strategies."):
        raise UserError(
            f"{first}: strategy_config._target_={strategy_config.get('_target_')!r} is not a medpeft strategy."
        )
    strategy = instantiate(strategy_config)
    checkpoint = backbone_checkpoint or backbone.get("checkpoint")
    if not checkpoint and not backbone.get("pretrained") and meta.get("strategy") != "full":
        raise UserError(
            f"{first} was trained on a randomly initialised backbone whose weights no file holds; "
            "pass backbone_checkpoint=PATH with the backbone it was trained on."
        )
    model, _ = create_backbone(
        backbone["name"],
        num_classes=len(json.loads(meta["class_names"])),
        img_size=backbone["img_size"],
        pretrained=backbone.get("pretrained", False),
        checkpoint=checkpoint,
        model_kwargs=backbone.get("kwargs") or {},
    )
    bank = AdapterBank(strategy.apply(model), strategy)
    for name, path in named.items():
        bank.add(name, path)
    return bank, backbone


@torch.no_grad()
def predict(
    adapters: Sequence[str] | Mapping[str, str],
    inputs: Sequence[str],
    batch_size: int = 32,
    merge: bool = False,
    backbone_checkpoint: str | None = None,
) -> tuple[list[Path], dict[str, torch.Tensor], dict[str, list[str]]]:
    """(files, probabilities per adapter (N x C), class names per adapter)."""
    bank, backbone = build_bank(adapters, backbone_checkpoint)
    files = collect_inputs(inputs)
    # Adapters from before the colour mode was recorded were all trained on grayscale.
    colors = {name: adapter.metadata.get("color", "gray") for name, adapter in bank.adapters.items()}
    decoded = {
        c: torch.stack([read_image(p, backbone["img_size"], c) for p in files]) for c in set(colors.values())
    }
    normalize = Normalize(backbone["mean"], backbone["std"])
    probs, classes = {}, {}
    for name, adapter in bank.adapters.items():
        bank.switch(name, merge=merge)
        task = Task(adapter.metadata["task"], tuple(adapter.class_names))
        chunks, pixels = [], decoded[colors[name]]
        for i in range(0, len(pixels), batch_size):
            batch = torch.stack([normalize(img) for img in pixels[i : i + batch_size]])
            logits = bank.model(batch).float()
            chunks.append(logits.sigmoid() if task.type == "multilabel" else logits.softmax(-1))
        probs[name], classes[name] = torch.cat(chunks), adapter.class_names
    return files, probs, classes


def write_csv(
    path: Path, files: list[Path], probs: dict[str, torch.Tensor], classes: dict[str, list[str]]
) -> None:
    header = ["path"] + [f"{name}:{c}" for name in probs for c in classes[name]]
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row, file in enumerate(files):
            writer.writerow([str(file)] + [f"{v:.6f}" for name in probs for v in probs[name][row].tolist()])


@hydra_entry("predict")
def main(cfg: DictConfig) -> None:
    raw = cfg.adapters
    adapters = [] if raw is None else [raw] if isinstance(raw, str) else OmegaConf.to_container(raw)
    try:
        with tempfile.TemporaryDirectory(prefix="melo-") as tmp:
            if cfg.get("melo"):
                if OmegaConf.is_missing(cfg.melo, "file"):
                    raise UserError(
                        "melo.file is required with a MeLo preset: melo.file=/path/to/adapter.safetensors"
                    )
                preset = OmegaConf.to_container(cfg.melo, resolve=True)
                adapter = melo_to_adapter(preset["file"], preset, Path(tmp) / "adapter.safetensors")
                adapters = {Path(preset["file"]).stem: str(adapter)}
            files, probs, classes = predict(
                adapters, list(cfg.inputs), cfg.batch_size, cfg.merge, cfg.backbone_checkpoint
            )
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    write_csv(Path(cfg.out), files, probs, classes)
    print(f"{len(files)} images x {len(probs)} adapters -> {cfg.out}", flush=True)


if __name__ == "__main__":
    main()
