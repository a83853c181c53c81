"""Users' own data: `dataset=image_folder` and `dataset=csv`, trained through the real config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.image_folder import ImageFolderDataModule
from src.data.table import CSVDataModule
from src.errors import UserError
from src.train import train
from tests.conftest import compose_train, recorded_test_cases
from tests.test_data import COMMON

FDR = ["dataset.num_workers=0", "debug=fdr", "logger=none", "dataset.batch_size=4"]


def write_images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / name for name in names]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(p)
    return paths


def snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_image_folder_flat_layout_trains_multiclass(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    for c in ("benign", "malignant", "normal"):
        write_images(root / c, [f"{c}_{i}.png" for i in range(10)])
    (root / "notes.txt").write_text("not an image")
    before = snapshot(root)
    metrics = train(compose_train(["dataset=image_folder", f"dataset.root={root}", *FDR], tmp_path))
    assert [metrics[f"data/{s}_size"] for s in ("train", "val", "test")] == [24, 3, 3]
    assert recorded_test_cases(metrics["run_dir"]) == 3
    assert snapshot(root) == before  # the source folder is never written


def test_image_folder_split_folders_and_class_order(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    for c in ("sick", "well"):
        write_images(root / "train" / c, [f"{i}.png" for i in range(10)])
        write_images(root / "val" / c, [f"{i}.png" for i in range(2)])
    dm = ImageFolderDataModule(**{**COMMON, "root": str(root)}, class_names=["well", "sick"])
    dm.check()
    assert (dm.task_type, dm.class_names) == ("binary", ("well", "sick"))
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [18, 4, 2]  # test carved from train
    test = dm.splits["test"]
    assert sorted(test.targets.tolist()) == [0, 1] and all("train" in str(p) for p in test.paths)
    assert dm.splits["val"].targets.tolist() == [0, 0, 1, 1]  # "well" is class 0 as listed
    write_images(root / "val" / "other", ["x.png"])
    with pytest.raises(UserError, match=r"\['other'\].*dataset\.class_names"):
        ImageFolderDataModule(**{**COMMON, "root": str(root)}, class_names=["well", "sick"]).check()


def write_table(folder: Path, rows: list[str]) -> Path:
    table = folder / "labels.csv"
    table.write_text("\n".join(["file,effusion,nodule,split,patient", *rows]) + "\n")
    return table


def test_csv_multilabel_with_split_and_patient_columns_trains(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    write_images(folder / "img", [f"{i}.png" for i in range(24)])
    rows = [
        f"img/{i}.png,{i % 2},{(i // 2) % 2},{'test' if i >= 20 else 'train'},p{i // 2}" for i in range(24)
    ]
    table = write_table(folder, rows)
    before = snapshot(folder)
    overrides = [
        "dataset=csv",
        f"dataset.csv={table}",
        "dataset.path_column=file",
        "dataset.label_columns=[effusion,nodule]",
        "dataset.split_column=split",
        "dataset.group_column=patient",
        *FDR,
    ]
    metrics = train(compose_train(overrides, tmp_path))
    assert metrics["data/test_size"] == 4
    assert metrics["data/train_size"] + metrics["data/val_size"] == 20
    dm = CSVDataModule(
        **{**COMMON, "root": None},
        csv=str(table),
        path_column="file",
        label_columns=["effusion", "nodule"],
        split_column="split",
        group_column="patient",
    )
    dm.check()
    assert (dm.task_type, dm.class_names) == ("multilabel", ("effusion", "nodule"))
    val_patients = set(dm.splits["val"].groups)
    assert val_patients and not val_patients & set(dm.splits["train"].groups)  # patients whole
    assert snapshot(folder) == before


def test_csv_single_label_classes_and_mistakes(tmp_path: Path) -> None:
    write_images(tmp_path / "img", [f"{i}.png" for i in range(12)])
    table = tmp_path / "t.csv"
    table.write_text("path,grade\n" + "".join(f"img/{i}.png,{[2, 10, 1][i % 3]}\n" for i in range(12)))
    dm = CSVDataModule(**{**COMMON, "root": str(tmp_path)}, csv="t.csv", label_columns=["grade"])
    dm.check()
    assert (dm.task_type, dm.class_names) == ("multiclass", ("1", "2", "10"))
    assert sum(len(dm.splits[s]) for s in ("train", "val", "test")) == 12

    table.write_text("path,grade\nimg/0.png,1\nimg/missing_a.png,2\nimg/missing_b.png,1\n")
    with pytest.raises(
        UserError, match=r"2 labelled in .*t\.csv have no file.*missing_a\.png, img/missing_b"
    ):
        CSVDataModule(**{**COMMON, "root": str(tmp_path)}, csv="t.csv", label_columns=["grade"]).check()
    with pytest.raises(UserError, match=r"no column\(s\) \['diagnosis'\]"):
        CSVDataModule(**{**COMMON, "root": str(tmp_path)}, csv="t.csv", label_columns=["diagnosis"]).check()
    with pytest.raises(UserError, match=r"label file \(dataset.csv\) .*nope\.csv not found"):
        CSVDataModule(**{**COMMON, "root": str(tmp_path)}, csv="nope.csv").check()
    with pytest.raises(UserError, match=r"dataset\.csv is not set"):
        CSVDataModule(**{**COMMON, "root": None}).check()
    table.write_text("path,a,b\nimg/0.png,1,maybe\n")
    with pytest.raises(UserError, match=r"column b, row img/0.png: 'maybe' is not 1 or 0"):
        CSVDataModule(**{**COMMON, "root": str(tmp_path)}, csv="t.csv", label_columns=["a", "b"]).check()


@pytest.mark.parametrize(
    ("table", "kw", "message"),
    [
        ("path,y,s\nimg/0.png,a,val\nimg/1.png,b,test\n", {"split_column": "s"}, r"no row as train"),
        ("path,y,s\nimg/0.png,a,train\nimg/1.png,b,later\n", {"split_column": "s"}, r"'later' is not train"),
        ("path,y\nimg/0.png,a\nimg/1.png,a\n", {}, r"column y of .* has 1 class"),
        ("path,y\nimg/0.png,a\nimg/1.png,c\n", {"class_names": ["a", "b"]}, r"holds \['c'\]"),
        ("path,y\n", {}, r"has no rows"),
        ("path,y\nimg/0.png,a\nimg/1.png,b\n", {"label_columns": []}, r"dataset\.label_columns is empty"),
        ("path,y\nimg/0.png,a\nimg/1.png,b\n", {"split_fractions": [0.5, 0.5]}, r"dataset\.split_fractions"),
        (
            "path,y\nimg/0.png,a\nimg/1.png,b\n",
            {},
            r"2 training images cannot be cut into train, val and test",
        ),
    ],
)
def test_csv_mistakes_are_named(tmp_path: Path, table: str, kw: dict, message: str) -> None:
    write_images(tmp_path / "img", ["0.png", "1.png"])
    (tmp_path / "t.csv").write_text(table)
    kw = {"label_columns": ["y"], **kw}
    with pytest.raises(UserError, match=message):
        CSVDataModule(**{**COMMON, "root": str(tmp_path)}, csv="t.csv", **kw).check()


def test_image_folder_mistakes_are_named(tmp_path: Path) -> None:
    def check(root: Path) -> None:
        ImageFolderDataModule(**{**COMMON, "root": str(root)}).check()

    write_images(tmp_path / "one" / "only", ["0.png"])
    with pytest.raises(UserError, match=r"1 class folder\(s\).*need at least 2"):
        check(tmp_path / "one")
    write_images(tmp_path / "nosplit" / "val" / "a", ["0.png"])
    with pytest.raises(UserError, match=r"has val but no train folder"):
        check(tmp_path / "nosplit")
    for c in ("a", "b"):
        write_images(tmp_path / "empty" / "train" / c, ["0.png", "1.png", "2.png"])
        write_images(tmp_path / "empty" / "test" / c, ["0.png"])
    (tmp_path / "empty" / "val" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no images for the val split"):
        check(tmp_path / "empty")
