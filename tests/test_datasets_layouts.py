"""The official-layout datasets on tiny fixture trees written as their publishers ship them: each one runs
a fast_dev_run through the real composed config, leaves its source untouched, and names what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from src.data.nih_cxr14 import FINDINGS as NIH_FINDINGS
from src.errors import UserError
from src.train import train
from tests.conftest import compose_train, recorded_test_cases
from tests.test_predict import write_dicom

RNG = np.random.default_rng(0)


def image(path: Path, size: int = 32, rgb: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (size, size, 3) if rgb else (size, size), dtype=np.uint8)).save(path)
    return path


def dicom(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dicom(path, RNG.integers(0, 4095, (32, 32)))


def make_blood_cells(root: Path) -> Path:
    """Kaggle nesting: dataset2-master/dataset2-master/images/<SPLIT>/<CLASS>/_<k>_<id>.jpeg."""
    images = root / "dataset2-master" / "dataset2-master" / "images"
    for split in ("TRAIN", "TEST", "TEST_SIMPLE"):
        for c, cls in enumerate(("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")):
            for i in range(2):
                image(images / split / cls / f"_{i}_{c}{i}.jpeg", rgb=True)
    return root


NIH_ROWS = [  # (patient, findings) for two follow-ups each
    (1, "Cardiomegaly"),
    (2, "No Finding"),
    (3, "Mass|Nodule"),
    (4, "Effusion|Pleural_Thickening"),
    (5, "No Finding"),
    (6, "Hernia"),
    (7, "Atelectasis|Infiltration"),
    (8, "No Finding"),
    (9, "Pneumothorax"),
    (10, "Edema|Emphysema|Fibrosis"),
    (11, "Consolidation"),
    (12, "Pneumonia"),
]


def make_nih(root: Path, v2020: bool = True) -> Path:
    """Kaggle layout (images_0XX/images/); the v2020 CSV (Patient Sex, a trailing comma on every row) or
    the original one (a trailing comma on the header only, bracketed column names)."""
    if v2020:
        header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,"
        header += (
            "OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y,"
        )
    else:
        header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        header += "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    lines, names = [header], []
    for patient, findings in NIH_ROWS:
        for follow_up in range(2):
            name = f"{patient:08d}_{follow_up:03d}.png"
            names.append(name)
            image(root / f"images_{1 + patient % 2:03d}" / "images" / name)
            tail = "," if v2020 else ""
            lines.append(f"{name},{findings},{follow_up},{patient},58,M,PA,2682,2749,0.143,0.143{tail}")
    name = "Data_Entry_2017_v2020.csv" if v2020 else "Data_Entry_2017.csv"
    (root / name).write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[:16]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[16:]) + "\n")
    return root


def nih_vector(findings: str) -> list[int]:
    return [int(f in findings.split("|")) for f in NIH_FINDINGS]


CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)


def chexpert_row(path: str, view: str, atel: str, cardio: str, consol: str, edema: str, effusion: str) -> str:
    ap = "AP" if view == "Frontal" else ""
    return f"{path},Female,68,{view},{ap},,,{cardio},,,{edema},{consol},,{atel},,{effusion},,,1.0"


def make_chexpert(root: Path) -> Path:
    """Kaggle mirror: train.csv / valid.csv at the root, Path still prefixed CheXpert-v1.0-small/."""
    values = ["1.0", "0.0", "-1.0", ""]
    train = [CHEXPERT_HEADER]
    for p in range(1, 11):
        for view, name in (("Frontal", "view1_frontal"), ("Lateral", "view2_lateral")):
            rel = f"train/patient{p:05d}/study1/{name}.jpg"
            image(root / rel)
            train.append(
                chexpert_row(f"CheXpert-v1.0-small/{rel}", view, *(values[(p + k) % 4] for k in range(5)))
            )
    valid = [CHEXPERT_HEADER]
    for p in range(64541, 64545):
        rel = f"valid/patient{p:05d}/study1/view1_frontal.jpg"
        image(root / rel)
        valid.append(
            chexpert_row(
                f"CheXpert-v1.0-small/{rel}", "Frontal", *(str(float((p + k) % 2)) for k in range(5))
            )
        )
    (root / "train.csv").write_text("\n".join(train) + "\n")
    (root / "valid.csv").write_text("\n".join(valid) + "\n")
    return root


def make_rsna(root: Path, n: int = 24) -> Path:
    """stage_2_train_labels.csv with one row per box (positives have two) + stage_2_train_images/*.dcm."""
    rows = ["patientId,x,y,width,height,Target"]
    for i in range(n):
        pid = f"{i:08x}-0000-4000-8000-{i:012x}"
        dicom(root / "stage_2_train_images" / f"{pid}.dcm")
        if i % 3 == 0:
            rows += [f"{pid},264.0,152.0,213.0,379.0,1", f"{pid},562.0,152.0,256.0,453.0,1"]
        else:
            rows.append(f"{pid},,,,,0")
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    return root


BIRADS = ["1", "2", "3", "4a", "4b", "4c", "5", "6", "2", "4a"]


def make_inbreast(root: Path, patients: int = 10) -> Path:
    """INbreast Release 1.0/: INbreast.csv (';') + AllDICOMs/<id>_<hash>_MG_<side>_<view>_ANON.dcm."""
    base = root / "INbreast Release 1.0"
    lines = ["Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"]
    for p in range(patients):
        for k, view in enumerate(("CC", "MLO")):
            file_id = 20586900 + 10 * p + k
            dicom(base / "AllDICOMs" / f"{file_id}_{p:016x}_MG_R_{view[:2]}_ANON.dcm")
            lines.append(f"removed;removed;R;{view};201001;{file_id};2;{BIRADS[p % len(BIRADS)]}")
    lines.append(";;;;;;;")  # an exported sheet's footer row without a file name
    (base / "INbreast.csv").write_text("\n".join(lines) + "\n")
    return base


MEDMNIST_CLASSES = {"pneumoniamnist": 2, "bloodmnist": 8, "chestmnist": 14, "organamnist": 11}


def make_medmnist(root: Path, flag: str, size: int = 28, n: int = 16) -> Path:
    rgb = flag == "bloodmnist"
    arrays = {}
    for split in ("train", "val", "test"):
        shape = (n, size, size, 3) if rgb else (n, size, size)
        arrays[f"{split}_images"] = RNG.integers(0, 255, shape, dtype=np.uint8)
        c = MEDMNIST_CLASSES[flag]
        if flag == "chestmnist":
            arrays[f"{split}_labels"] = (RNG.random((n, c)) < 0.3).astype(np.uint8)
        else:
            arrays[f"{split}_labels"] = (np.arange(n) % c).astype(np.uint8)[:, None]
    root.mkdir(parents=True, exist_ok=True)
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    np.savez_compressed(path, **arrays)
    return path


def tree_state(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("dataset", "build", "extra"),
    [
        ("blood_cells", make_blood_cells, []),
        ("nih_cxr14", make_nih, ["dataset.val_fraction=0.25"]),
        ("chexpert", make_chexpert, ["dataset.uncertainty=ignore", "dataset.val_fraction=0.2"]),
        ("rsna_pneumonia", make_rsna, []),
        ("inbreast", make_inbreast, ["dataset.fold=2"]),
        ("medmnist", lambda root: make_medmnist(root, "chestmnist").parent, ["dataset.name=chestmnist"]),
    ],
)
def test_official_layout_trains(tmp_path: Path, dataset: str, build, extra: list[str]) -> None:
    root = build(tmp_path / "source")  # the cache goes to tmp_path/data
    before = tree_state(root)
    overrides = [
        f"dataset={dataset}",
        f"dataset.root={root}",
        "dataset.num_workers=0",
        "dataset.batch_size=4",
    ]
    metrics = train(
        compose_train([*overrides, *extra, "backbone=tiny", "debug=fdr", "logger=none"], tmp_path)
    )
    assert np.isfinite(metrics["test/auroc"]) and recorded_test_cases(metrics["run_dir"]) >= 1
    assert tree_state(root) == before  # the source folder is never written
    # Every split is recorded, each case by its file under the root (MedMNIST: its row in the .npz).
    for split in ("train", "val", "test"):
        ids = [
            line.split(",")[0]
            for line in (tmp_path / "run" / "splits" / f"{split}.csv").read_text().splitlines()[1:]
        ]
        assert ids and (dataset == "medmnist" or all((root / i).is_file() for i in ids))
    if dataset in ("nih_cxr14", "chexpert"):  # they record sex and age: one subgroup each here
        assert metrics["test/subgroup/sex/" + ("M" if dataset == "nih_cxr14" else "F") + "/n"] > 0


@pytest.mark.parametrize(
    ("dataset", "shown"),
    [
        ("blood_cells", r"images/\{TRAIN,TEST,TEST_SIMPLE\}"),
        ("nih_cxr14", r"Data_Entry_2017\.csv"),
        ("chexpert", r"train\.csv"),
        ("rsna_pneumonia", r"stage_2_train_labels\.csv"),
        ("inbreast", r"INbreast\.csv"),
    ],
)
def test_missing_files_name_the_path_and_layout(tmp_path: Path, dataset: str, shown: str) -> None:
    (tmp_path / "empty").mkdir()
    cfg = compose_train([f"dataset={dataset}", f"dataset.root={tmp_path / 'empty'}"], tmp_path)
    with pytest.raises(UserError, match=rf"{tmp_path / 'empty'}.*Expected layout: .*{shown}"):
        instantiate(cfg.dataset).check()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset=medmnist dataset.name=foomnist", r"dataset.name='foomnist' is not a 2D MedMNIST subset"),
        ("dataset=inbreast dataset.fold=7", r"dataset.fold=7 must be one of 0..4"),
        ("dataset=chexpert dataset.uncertainty=u_half", r"dataset.uncertainty='u_half' is unknown"),
    ],
)
def test_bad_dataset_options_are_user_errors(tmp_path: Path, override: str, message: str) -> None:
    """Raised in the constructor, they reach the entry point as UserError, not Hydra's wrapper."""
    with pytest.raises(UserError, match=message):
        train(compose_train([*override.split(), "logger=none"], tmp_path))
