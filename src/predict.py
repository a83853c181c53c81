"""Predict with one frozen backbone and several task adapters:
``python -m src.predict adapters=[a.safetensors,b.safetensors] inputs=[img.png,folder/,scan.dcm]``.

The model is rebuilt from the first adapter's recorded backbone and strategy configs; every adapter goes
into one :class:`~src.bank.AdapterBank`, so switching tasks costs no reload. Images are decoded once and
every adapter runs over them in batches, in the colour mode (gray / rgb) its run was trained in. The CSV has one row per image and one column per
``<task>:<class>`` probability (softmax for binary / multiclass, sigmoid for multilabel), plus a
``<task>:predicted`` decision per adapter; ``<task>`` is the dataset the adapter was trained on
(:mod:`src.prediction_columns`).
Unreadable files never cost the others: see :mod:`src.predict_inputs` (``<out>.errors.csv``, exit status 1,
``on_bad_image``, ``dicom_frames``).
"""

from __future__ import annotations

if __name__ == "__main__":  # config errors in a second, before the heavy imports below (src/entry.py)
    from src.entry import check_config

    check_config("predict")

import csv
import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.adapter import read_metadata
from src.atomic import atomic_write
from src.bank import AdapterBank
from src.config import hydra_entry
from src.data.base import Normalize
from src.data.protocol_dataset import predict_inputs
from src.data.transforms import Decode
from src.errors import UserError
from src.melo import melo_to_adapter
from src.models.backbone import create_backbone
from src.predict_inputs import DecodedInputs, check_options, collect_inputs, decode_inputs, write_errors
from src.prediction_columns import AdapterTask, adapter_tasks, check_threshold
from src.prediction_columns import header as csv_header
from src.prediction_columns import rows as csv_rows
from src.tasks import Task

log = logging.getLogger(__name__)


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
        allow_missing=backbone.get("allow_missing") or [],
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
    dicom_frames: str = "error",
    refused: list[tuple[str, str]] | None = None,
) -> tuple[list[Path], dict[str, torch.Tensor], dict[str, list[str]]]:
    """(row names: files or ``<file>#<frame>``, probabilities per adapter (N x C), class names per adapter).
    An unreadable file stops the run, unless ``refused`` is a list: then it is appended there as
    (file, reason) and the other files are predicted."""
    files = collect_inputs(inputs)
    bank, backbone = build_bank(adapters, backbone_checkpoint)
    # Each adapter's decoding (colour mode, resize / DICOM intensity rules), decoded once per kind; adapters
    # from before these were recorded were all trained on grayscale squares.
    modes = {
        name: (a.metadata.get("color", "gray"), Decode.from_metadata(a.metadata))
        for name, a in bank.adapters.items()
    }
    inputs_ = decode_inputs(
        files, backbone["img_size"], modes.values(), dicom_frames, "error" if refused is None else "skip"
    )
    normalize = Normalize(backbone["mean"], backbone["std"])
    probs, classes = {}, {}
    for name, adapter in bank.adapters.items():
        bank.switch(name, merge=merge)
        task = Task(
            adapter.metadata["task"],
            tuple(adapter.class_names),
            binary_head=adapter.metadata.get("binary_head", "softmax"),
        )
        chunks, batches = [], adapter_batches(inputs_, modes[name], adapter.metadata, backbone, normalize)
        for i in range(0, len(inputs_.rows), batch_size):
            batch = batches(i, i + batch_size)
            logits = bank.model(batch).float()
            chunks.append(task.probabilities(logits))
        empty = torch.empty(0, len(adapter.class_names))
        probs[name], classes[name] = torch.cat(chunks) if chunks else empty, adapter.class_names
    if refused is not None:
        refused += inputs_.refused
    return inputs_.rows, probs, classes


def adapter_batches(
    inputs_: DecodedInputs,
    mode: tuple[str, Decode],
    metadata: Mapping[str, str],
    backbone: Mapping[str, object],
    normalize: Normalize,
) -> Callable[[int, int], torch.Tensor]:
    """Rows ``start:stop`` as the adapter saw its test split: the decoded squares normalised, or, for an
    adapter trained with a paper's protocol (``dataset.protocol``), each readable file through that
    protocol's evaluation transform."""
    if metadata.get("protocol", "squash") != "squash":
        if any("#" in row.name for row in inputs_.rows):
            raise UserError(
                f"dicom_frames=all gives one row per frame, but this adapter's dataset.protocol="
                f"{metadata['protocol']} transforms whole files: use dicom_frames=first or middle."
            )
        meta = {"color": mode[0], **mode[1].metadata(), "protocol": metadata["protocol"]}
        return predict_inputs(inputs_.rows, meta, backbone["img_size"], backbone["mean"], backbone["std"])
    pixels = inputs_.pixels[mode]
    return lambda start, stop: torch.stack([normalize(img) for img in pixels[start:stop]])


def write_csv(
    path: Path,
    files: list[Path],
    probs: dict[str, torch.Tensor],
    tasks: dict[str, AdapterTask],
    threshold: float = 0.5,
) -> None:
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(tasks))
        writer.writerows(csv_rows(files, probs, tasks, threshold))


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
            check_options(cfg.on_bad_image, cfg.dicom_frames)
            threshold = check_threshold(cfg.threshold)
            refused: list[tuple[str, str]] | None = [] if cfg.on_bad_image == "skip" else None
            files, probs, _ = predict(
                adapters,
                list(cfg.inputs),
                cfg.batch_size,
                cfg.merge,
                cfg.backbone_checkpoint,
                cfg.dicom_frames,
                refused,
            )
            tasks = adapter_tasks(adapter_names(adapters), user_named=isinstance(adapters, Mapping))
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    write_csv(Path(cfg.out), files, probs, tasks, threshold)
    print(f"{len(files)} images x {len(probs)} adapters -> {cfg.out}", flush=True)
    errors = write_errors(Path(cfg.out), refused or [])
    if errors:
        raise SystemExit(f"error: {len(refused)} file(s) refused, each with its reason in {errors}")


if __name__ == "__main__":
    main()
