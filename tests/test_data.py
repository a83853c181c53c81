"""The synthetic generator, the stratified splitter and the Shenzhen loader on a fixture tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.radiographs import FINDINGS, render_split
from src.data.splits import holdout_sizes, stratified_split
from src.data.synthetic import SyntheticDataModule
from src.data.sz_cxr import ShenzhenCXRDataModule
from src.errors import UserError
from src.train import train
from tests.conftest import compose_train, recorded_test_cases

COMMON = {"name": "t", "root": None, "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "batch_size": 8}


def synthetic(**kw) -> SyntheticDataModule:
    dm = SyntheticDataModule(sizes={"train": 40, "val": 20, "test": 20}, **{**COMMON, **kw})
    dm.setup()
    return dm


def test_synthetic_is_deterministic_in_its_seed() -> None:
    a, b, c = synthetic(seed=5), synthetic(seed=5), synthetic(seed=6)
    assert torch.equal(a.datasets["test"].images, b.datasets["test"].images)
    assert not torch.equal(a.datasets["test"].images, c.datasets["test"].images)
    assert not torch.equal(a.datasets["val"].images, a.datasets["test"].images)


def test_findings_change_the_pixels_only_where_present() -> None:
    present = torch.zeros(4, len(FINDINGS), dtype=torch.bool)
    with_opacity = present.clone()
    with_opacity[:, 0] = True
    clean = render_split(present, FINDINGS, 64, seed=0).float()
    sick = render_split(with_opacity, FINDINGS, 64, seed=0).float()
    assert (sick - clean).mean() > 0.2  # opacities add density
    assert clean.shape == (4, 64, 64)


@pytest.mark.parametrize(
    ("task", "shape", "dtype"),
    [
        ("binary", (20,), torch.int64),
        ("multiclass", (20,), torch.int64),
        ("multilabel", (20, 3), torch.float32),
    ],
)
def test_synthetic_task_types(task: str, shape: tuple, dtype: torch.dtype) -> None:
    findings = ["opacity"] if task == "binary" else ["opacity", "cavity", "effusion"]
    dm = synthetic(task=task, findings=findings)
    targets = dm.datasets["test"].targets
    assert targets.shape == shape and targets.dtype == dtype
    image, _ = dm.datasets["train"][0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32


def test_synthetic_rejects_unknown_findings() -> None:
    with pytest.raises(UserError, match=r"dataset\.findings"):
        SyntheticDataModule(findings=["tumour"], **COMMON)


def test_melo_split_sizes_and_stratification() -> None:
    assert holdout_sizes(662) == (529, 67, 66)
    labels = [0] * 326 + [1] * 336
    parts = stratified_split(labels, holdout_sizes(662), seed=42)
    assert [len(p) for p in parts] == [529, 67, 66]
    assert sorted(np.concatenate(parts).tolist()) == list(range(662))
    for part in parts:
        share = np.mean(np.asarray(labels)[part])
        assert abs(share - 336 / 662) < 0.02
    again = stratified_split(labels, holdout_sizes(662), seed=42)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def make_shenzhen(root: Path, n: int = 20) -> Path:
    images = root / "CXR_png"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        pixels = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)  # RGB, as NLM ships them
        Image.fromarray(pixels).save(images / f"CHNCXR_{i:04d}_{i % 2}.png")
    (root / "ClinicalReadings").mkdir()
    return root


def test_shenzhen_layout_split_and_training(tmp_path: Path) -> None:
    root = make_shenzhen(tmp_path / "ChinaSet_AllFiles")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in root.rglob("*"))
    dm = ShenzhenCXRDataModule(class_names=["normal", "tuberculosis"], **{**COMMON, "root": str(root)})
    dm.check()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    overrides = [
        "dataset=sz_cxr",
        f"dataset.root={root}",
        "dataset.num_workers=0",
        "debug=fdr",
        "logger=none",
    ]
    metrics = train(compose_train(overrides, tmp_path))
    assert recorded_test_cases(metrics["run_dir"]) == 2  # both test images, in the split's order
    assert sorted((p.name, p.stat().st_mtime_ns) for p in root.rglob("*")) == before  # source untouched


def test_shenzhen_missing_root_names_the_key_and_layout(tmp_path: Path) -> None:
    dm = ShenzhenCXRDataModule(class_names=["normal", "tuberculosis"], **{**COMMON, "root": str(tmp_path)})
    with pytest.raises(UserError, match=r"dataset.root=.*CXR_png/CHNCXR_0001_0.png"):
        dm.check()


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    root = make_shenzhen(tmp_path / "sz", n=6)
    bad = root / "CXR_png" / "CHNCXR_0001_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dm = ShenzhenCXRDataModule(class_names=["normal", "tuberculosis"], **{**COMMON, "root": str(root)})
    dm.setup()
    split = next(s for s in ("train", "val", "test") if bad in dm.splits[s].paths)
    with pytest.raises(UserError, match=r"CHNCXR_0001_1\.png"):
        dm.datasets[split][dm.splits[split].paths.index(bad)]
