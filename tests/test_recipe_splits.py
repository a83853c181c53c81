"""MED-PEFT's split sizes through the MED-PEFT recipe, on fixture trees with the paper's counts: its own
lists (``dataset.split_dir``, chosen by ``medpeft.labels``) give exactly their sizes and no second
label-fraction cut; a label fraction together with a list is refused; without lists the recipe refuses to run
unless ``medpeft.allow_own_splits=true``. The fixture lists lack their final newline, as MED-PEFT's do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import src.data.nih_cxr14 as nih
from src.config import instantiate_user
from src.data.medpeft_lists import check_medpeft_splits
from src.errors import UserError
from tests.conftest import compose_train

# MED-PEFT (Lian et al., 2024): training images at 1 % / 10 % / 100 %, then val and test
NIH = {"train_1": 785, "train_10": 7_847, "train_list": 78_468, "val_list": 11_219, "test_list": 22_433}
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


@pytest.mark.parametrize(("labels", "subset"), [("1pct", "train_1"), ("100pct", "train_list")])
def test_medpeft_lists_give_the_papers_nih_sizes(labels, subset, nih_tree, tmp_path, monkeypatch) -> None:
    # medpeft.labels alone picks the list: never a silent 100 % with the 1 % learning rate and epochs
    overrides = [f"medpeft.labels={labels}", f"dataset.split_dir={nih_tree[1]}"]
    cfg, dm = nih_datamodule(overrides, nih_tree, tmp_path, monkeypatch)
    assert cfg.dataset.label_fraction == 1.0 and cfg.dataset.split_train == subset  # the list is the subset
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [NIH[subset], 11_219, 22_433]
    # the real files' quirk: no final newline, so `wc -l` says one less than the images they list
    text = (nih_tree[1] / "test_list.txt").read_text()
    assert not text.endswith("\n") and text.count("\n") == 22_432


def test_label_fraction_with_a_list_is_refused_naming_both_keys(nih_tree, tmp_path, monkeypatch) -> None:
    overrides = ["medpeft.labels=1pct", f"dataset.split_dir={nih_tree[1]}", "dataset.label_fraction=0.01"]
    with pytest.raises(UserError, match=r"dataset\.label_fraction=0\.01 together with dataset\.split_dir"):
        nih_datamodule(overrides, nih_tree, tmp_path, monkeypatch)


@pytest.mark.parametrize("dataset", ["nih_cxr14", "chexpert", "rsna_pneumonia"])
def test_medpeft_recipe_refuses_its_datasets_without_their_lists(dataset: str, tmp_path: Path) -> None:
    cfg = compose_train(["experiment=medpeft", f"dataset={dataset}", "medpeft.labels=10pct"], tmp_path)
    assert cfg.dataset.split_train == "train_10"  # what a split_dir run would read
    with pytest.raises(UserError, match=r"only MED-PEFT's own lists.*medpeft\.allow_own_splits=true"):
        check_medpeft_splits(cfg)
    cfg.medpeft.splits_root = "/data/DatasetsSplits"  # the table sweep's way: each dataset's folder under it
    folder = {"nih_cxr14": "NIH_ChestX-ray", "chexpert": "CheXpert", "rsna_pneumonia": "RSNA_Pneumonia"}[
        dataset
    ]
    assert cfg.dataset.split_dir == f"/data/DatasetsSplits/{folder}" and cfg.dataset.label_fraction == 1.0
    check_medpeft_splits(cfg)
    cfg.medpeft.splits_root, cfg.medpeft.allow_own_splits = None, True
    assert cfg.dataset.split_dir is None and cfg.dataset.label_fraction == 0.1
    check_medpeft_splits(cfg)


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
        ],
        tmp_path,
    )
    dm = instantiate_user(cfg.dataset)
    dm.check()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [251, 1_500, 3_000]
    assert cfg.rank == 4 and cfg.optim.lr == 0.01  # MRM, RSNA, 1 %: lr 0.01, r4


CHEXPERT = {"train_1": 6, "val_list": 4, "test_list": 5}


def test_medpeft_chexpert_lists(tmp_path: Path) -> None:
    """MED-PEFT's CheXpert lists: paths relative to the folder holding CheXpert-v1.0-small, test images from
    the later CheXpert test set (test/, in no CSV), 5 labels in the list's order taken from the list."""
    root, lists = tmp_path / "chexpert", tmp_path / "DatasetsSplits" / "CheXpert"
    lists.mkdir(parents=True)
    rng = np.random.default_rng(1)
    expected, patient = {}, 0
    for stem, n in CHEXPERT.items():
        folder = {"train_1": "train", "val_list": "valid", "test_list": "test"}[stem]
        rows = []
        for i in range(n):
            patient += 1
            rel = f"CheXpert-v1.0-small/{folder}/patient{patient:05d}/study1/view{1 + i % 2}_frontal.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).touch()
            labels = rng.integers(0, 2, 5)
            rows.append(f"{rel} {' '.join(str(v) for v in labels)}")
            expected.setdefault(stem, []).append((root / rel, labels))
        (lists / f"{stem}.txt").write_text("\n".join(rows))
    base = ["experiment=medpeft", "dataset=chexpert", "medpeft.labels=1pct", f"dataset.split_dir={lists}"]
    for where in (root, root / "CheXpert-v1.0-small"):  # the parent folder or the release folder itself
        cfg = compose_train([*base, f"dataset.root={where}"], tmp_path)
        dm = instantiate_user(cfg.dataset)
        dm.check()
        for split, stem in (("train", "train_1"), ("val", "val_list"), ("test", "test_list")):
            part = dm.splits[split]
            assert [p.resolve() for p in part.paths] == [p.resolve() for p, _ in expected[stem]]
            assert part.targets.tolist() == [lab.astype(float).tolist() for _, lab in expected[stem]]
            assert part.groups == [p.parts[-3] for p, _ in expected[stem]]
