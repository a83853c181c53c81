"""MED-PEFT's split sizes through the MED-PEFT recipe, on fixture trees with the paper's counts: its own
lists (``dataset.split_dir``) give exactly their sizes and no second label-fraction cut; without lists the
recipe's label fraction reproduces its 1 % / 10 % NIH subsets from the 78,467 training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import src.data.nih_cxr14 as nih
from src.config import instantiate_user
from tests.conftest import compose_train

# MED-PEFT (Lian et al., 2024): training images at 1 % / 10 % / 100 %, then val and test
NIH = {"train_1": 785, "train_10": 7_847, "train_list": 78_467, "val_list": 11_218, "test_list": 22_432}
RSNA = {"train_1": 251, "val_list": 1_500, "test_list": 3_000}


def write_nih_lists(folder: Path) -> list[str]:
    """MED-PEFT's NIH list format, ``<png> <14 labels>``, every image its own patient; subsets nested."""
    folder.mkdir()
    names = [f"{i:08d}_000.png" for i in range(NIH["train_list"] + NIH["val_list"] + NIH["test_list"])]
    labels = np.random.default_rng(0).random((len(names), 14)) < 0.08
    lines = [f"{n} {' '.join('1' if x else '0' for x in row)}" for n, row in zip(names, labels, strict=True)]
    train, val = NIH["train_list"], NIH["train_list"] + NIH["val_list"]
    for stem, part in [
        ("train_list", lines[:train]),
        ("train_10", lines[: NIH["train_10"]]),
        ("train_1", lines[: NIH["train_1"]]),
        ("val_list", lines[train:val]),
        ("test_list", lines[val:]),
    ]:
        (folder / f"{stem}.txt").write_text("\n".join(part))  # MED-PEFT's last line has no newline
    return names


@pytest.fixture(scope="module")
def nih_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("nih")
    return root, root / "DatasetsSplits", write_nih_lists(root / "DatasetsSplits")


def nih_datamodule(overrides: list[str], tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root, _, names = tree
    # the pixels are never read here: the PNG folder listing is replaced by the names the lists hold
    monkeypatch.setattr(nih, "find_images", lambda _root: dict.fromkeys(names, root / "images"))
    cfg = compose_train(["experiment=medpeft", f"dataset.root={root}", *overrides], tmp_path)
    datamodule = instantiate_user(cfg.dataset)
    datamodule.check()
    return cfg, datamodule


@pytest.mark.parametrize(("labels", "subset"), [("1pct", "train_1"), ("10pct", "train_10")])
def test_medpeft_lists_give_the_papers_nih_sizes(labels, subset, nih_tree, tmp_path, monkeypatch) -> None:
    overrides = [
        f"medpeft.labels={labels}",
        f"dataset.split_dir={nih_tree[1]}",
        f"dataset.split_train={subset}",
    ]
    cfg, dm = nih_datamodule(overrides, nih_tree, tmp_path, monkeypatch)
    assert cfg.dataset.label_fraction == 1.0  # the list is the subset: no second cut
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [NIH[subset], 11_218, 22_432]


def test_label_fraction_reproduces_medpeft_nih_one_percent(nih_tree, tmp_path, monkeypatch) -> None:
    # the recipe's path without MED-PEFT's lists (label_fraction 0.01), here applied to their full list
    overrides = ["medpeft.labels=1pct", f"dataset.split_dir={nih_tree[1]}", "dataset.label_fraction=0.01"]
    _, dm = nih_datamodule(overrides, nih_tree, tmp_path, monkeypatch)
    assert dm.full_train_size == 78_467 and len(dm.splits["train"]) == 785


def test_medpeft_rsna_one_percent_list(tmp_path: Path) -> None:
    root, lists = tmp_path / "rsna", tmp_path / "lists"
    (root / "stage_2_train_images").mkdir(parents=True)
    lists.mkdir()
    start = 0
    for stem, n in RSNA.items():
        rows = [f"stage_2_train_images/p{i:06d}.dcm {i % 5 == 0:d}" for i in range(start, start + n)]
        for row in rows:
            (root / row.split()[0]).touch()
        (lists / f"{stem}.txt").write_text("\n".join(rows))
        start += n
    cfg = compose_train(
        [
            "experiment=medpeft",
            "dataset=rsna_pneumonia",
            "medpeft.labels=1pct",
            f"dataset.root={root}",
            f"dataset.split_dir={lists}",
            "dataset.split_train=train_1",
        ],
        tmp_path,
    )
    dm = instantiate_user(cfg.dataset)
    dm.check()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [251, 1_500, 3_000]
    assert cfg.rank == 4 and cfg.optim.lr == 0.01  # MRM, RSNA, 1 %: lr 0.01, r4
