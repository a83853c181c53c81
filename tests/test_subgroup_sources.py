"""Where subgroup attributes come from: NIH's label file (also under MED-PEFT's lists), a CSV dataset's
group_columns, DICOM headers; and the sample ids every split reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from src.data.nih_cxr14 import NIHChestXray14DataModule
from src.data.subgroups import dicom_subgroups
from src.data.table import CSVDataModule
from tests.test_datasets_layouts import make_nih
from tests.test_predict import write_dicom

COMMON = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "batch_size": 4}


def test_nih_subgroups_official_split_and_medpeft_lists(tmp_path: Path) -> None:
    root = make_nih(tmp_path / "nih")  # every row: Patient Sex M, age 58
    official = NIHChestXray14DataModule(name="t", root=str(root), val_fraction=0.25, **COMMON)
    n = len(official.sample_ids("test"))
    assert official.subgroups("test") == {"sex": ["M"] * n, "age": ["58"] * n}
    names = sorted(p.name for p in root.glob("images_*/images/*.png"))
    lists = tmp_path / "NIH_ChestX-ray"
    lists.mkdir()
    line = [f"{name} {' '.join(['0'] * 14)}" for name in names]
    for stem, rows in (("train_list", line[:16]), ("val_list", line[16:20]), ("test_list", line[20:])):
        (lists / f"{stem}.txt").write_text("\n".join(rows))
    listed = NIHChestXray14DataModule(name="t", root=str(root), split_dir=str(lists), **COMMON)
    assert listed.subgroups("test")["sex"] == ["M"] * len(line[20:])
    assert [Path(i).name for i in listed.sample_ids("test")] == names[20:]


def test_csv_group_columns_and_ids(tmp_path: Path) -> None:
    rows = ["path,label,sex,age,split"]
    for i in range(12):
        (tmp_path / f"{i}.png").write_bytes(b"")  # indexing never decodes pixels
        rows.append(f"{i}.png,{i % 2},{'FM'[i % 2]},{20 + 5 * i},{['train', 'val', 'test'][i % 3]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    dm = CSVDataModule(
        name="t",
        csv=str(tmp_path / "labels.csv"),
        split_column="split",
        group_columns=["sex", "age"],
        **COMMON,
    )
    assert dm.sample_ids("test") == ["2.png", "5.png", "8.png", "11.png"]
    assert dm.subgroups("test") == {"sex": ["F", "M", "F", "M"], "age": ["30", "45", "60", "75"]}
    assert dm.split_targets("test").tolist() == [0, 1, 0, 1]


def test_dicom_header_subgroups(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    ds.PatientSex, ds.PatientAge = "F", "058Y"
    ds.save_as(path)
    write_dicom(tmp_path / "b.dcm", np.zeros((8, 8)))  # no such tags
    (tmp_path / "c.dcm").write_bytes(b"not a dicom")
    got = dicom_subgroups([tmp_path / "a.dcm", tmp_path / "b.dcm", tmp_path / "c.dcm"])
    assert got == {"sex": ["F", "", ""], "age": ["058Y", "", ""]}
