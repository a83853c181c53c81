"""Label fractions: sizes, stratification, patient grouping, determinism; what a run records (split sizes,\nthe training files, images skipped with dataset.on_bad_image=skip)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from src.data.files import check_labels_match
from src.data.splits import label_fraction_indices
from src.data.sz_cxr import ShenzhenCXRDataModule
from src.errors import UserError
from src.train import train
from tests.conftest import compose_train
from tests.test_data import COMMON, make_shenzhen
from tests.test_data_user import FDR


def test_single_label_exact_size_and_class_proportions() -> None:
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    idx = label_fraction_indices(labels, 0.1, seed=3)
    assert len(idx) == 100 and len(set(idx)) == 100
    assert np.bincount(labels[idx]).tolist() == [60, 30, 10]
    assert np.array_equal(idx, label_fraction_indices(labels, 0.1, seed=3))
    assert not np.array_equal(idx, label_fraction_indices(labels, 0.1, seed=4))
    assert len(label_fraction_indices(labels, 1e-6, seed=0)) == 1  # never empty
    assert np.array_equal(label_fraction_indices(labels, 1.0, seed=0), np.arange(1000))


def test_multilabel_keeps_label_prevalence_and_patients_together() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    prevalence = np.array([0.3, 0.1, 0.03, 0.01])
    targets = (rng.random((n, 4)) < prevalence).astype(np.float32)
    targets[rng.random((n, 4)) < 0.05] = np.nan  # unknown labels
    groups = [f"p{i}" for i in rng.integers(0, 1500, n)]
    idx = label_fraction_indices(targets, 0.1, seed=1, groups=groups)
    assert abs(len(idx) - 400) <= 5
    positives = np.nansum(targets[idx], axis=0) / np.nansum(targets, axis=0)
    assert np.all(np.abs(positives - 0.1) < 0.02), positives
    chosen = {groups[i] for i in idx}
    assert all((groups[i] in chosen) == (i in set(idx.tolist())) for i in range(n))  # whole patients
    assert np.array_equal(idx, label_fraction_indices(targets, 0.1, seed=1, groups=groups))


def test_label_fraction_is_validated(tmp_path: Path) -> None:
    root = make_shenzhen(tmp_path / "sz", n=6)
    for bad in (0, 1.5, -0.1, "half", True):
        dm = ShenzhenCXRDataModule(
            label_fraction=bad, class_names=["n", "tb"], **{**COMMON, "root": str(root)}
        )
        with pytest.raises(UserError, match=r"dataset\.label_fraction"):
            dm.check()


def test_run_records_the_fraction_files_sizes_and_skipped_images(tmp_path: Path) -> None:
    root = make_shenzhen(tmp_path / "sz", n=40)
    dm = ShenzhenCXRDataModule(class_names=["n", "tb"], **{**COMMON, "root": str(root)})
    dm.check()
    bad = dm.splits["val"].paths[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    overrides = [
        "dataset=sz_cxr",
        f"dataset.root={root}",
        "dataset.label_fraction=0.25",
        "dataset.on_bad_image=skip",
        *FDR,
    ]
    metrics = train(compose_train(overrides, tmp_path))
    assert (metrics["data/train_size"], metrics["data/train_size_full"]) == (8, 32)
    assert (metrics["data/val_size"], metrics["data/test_size"], metrics["data/bad_images"]) == (3, 4, 1)
    run = tmp_path / "run"
    listed = (run / "train_files.txt").read_text().split()
    assert len(listed) == 8 and all(name.startswith("CXR_png/CHNCXR_") for name in listed)
    assert sorted(int(name[-5]) for name in listed) == [0] * 4 + [1] * 4  # stratified
    assert (run / "skipped_images.txt").read_text().startswith(f"CXR_png/{bad.name}\t")
    assert json.loads((run / "metrics.json").read_text())["data/label_fraction"] == 0.25


@pytest.mark.parametrize(
    ("key", "value"),
    [("on_bad_image", "ignore"), ("crop_margin", 2.0), ("crop_margin", True), ("cache_dir", None)],
)
def test_shared_keys_are_validated(tmp_path: Path, key: str, value: object) -> None:
    root = make_shenzhen(tmp_path / "sz", n=6)
    dm = ShenzhenCXRDataModule(
        class_names=["n", "tb"], **{**COMMON, "root": str(root)}, cache=True, **{key: value}
    )
    with pytest.raises(UserError, match=rf"dataset\.{key}"):
        dm.check()


def test_check_labels_match_lists_the_first_mismatches() -> None:
    check_labels_match(["a", "b"], ["a", "b", "extra"], "labels.csv", "images/")  # extra files are fine
    with pytest.raises(UserError, match=r"1 files in images/ have no label in labels\.csv \(first: extra\)"):
        check_labels_match(["a"], ["a", "extra"], "labels.csv", "images/", allow_unlabelled_files=False)
    check_labels_match(["a", "gone"], ["a"], "labels.csv", "images/", allow_missing_files=True)
    names = [f"x{i}" for i in range(9)]
    with pytest.raises(UserError, match=r"9 labelled in labels\.csv have no file .*x0, x1, x2, x3, x4\)"):
        check_labels_match(names, [], "labels.csv", "images/")
