"""What each official-layout dataset reads: labels, class orders, patient-disjoint splits and folds, the
uncertainty policy, MED-PEFT's lists, MedMNIST's task types, and masked (unknown) multilabel targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC

from src.data.blood_cells import BloodCellsDataModule
from src.data.chexpert import CheXpertDataModule
from src.data.inbreast import INbreastDataModule
from src.data.medmnist import MedMNISTDataModule
from src.data.nih_cxr14 import NIHChestXray14DataModule
from src.data.rsna_pneumonia import RSNAPneumoniaDataModule, medpeft_sizes
from src.errors import UserError
from src.tasks import Task
from tests.test_datasets_layouts import (
    NIH_ROWS,
    make_blood_cells,
    make_chexpert,
    make_inbreast,
    make_medmnist,
    make_nih,
    make_rsna,
    nih_vector,
)

COMMON = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "batch_size": 4}


def splits(cls, root: Path, **kw) -> dict:
    dm = cls(name="t", root=str(root), **COMMON, **kw)
    dm.check()
    return dm.splits


def test_blood_cells_splits_and_melo_class_order(tmp_path: Path) -> None:
    parts = splits(BloodCellsDataModule, make_blood_cells(tmp_path))
    for split, folder in (("train", "TRAIN"), ("val", "TEST"), ("test", "TEST_SIMPLE")):
        assert all(p.parent.parent.name == folder for p in parts[split].paths)
    order = {"NEUTROPHIL": 0, "MONOCYTE": 1, "EOSINOPHIL": 2, "LYMPHOCYTE": 3}
    assert [order[p.parent.name] for p in parts["train"].paths] == parts["train"].targets.tolist()


@pytest.mark.parametrize("v2020", [True, False])
def test_nih_official_split_is_patient_disjoint_with_nih_labels(tmp_path: Path, v2020: bool) -> None:
    root = make_nih(tmp_path, v2020=v2020)
    parts = splits(NIHChestXray14DataModule, root, val_fraction=0.25)
    patients = {s: set(parts[s].groups) for s in parts}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"])
    assert not patients["val"] & patients["test"]
    assert [p.name for p in parts["test"].paths] == (root / "test_list.txt").read_text().split()
    assert len(parts["train"]) + len(parts["val"]) == 16 and len(parts["val"]) >= 2
    expected = {f"{pid:08d}": nih_vector(findings) for pid, findings in NIH_ROWS}
    for part in parts.values():
        for path, target in zip(part.paths, part.targets.tolist(), strict=True):
            assert target == expected[path.name[:8]]  # incl. No Finding = zeros, Pleural_Thickening = 12
    again = splits(NIHChestXray14DataModule, root, val_fraction=0.25)
    assert again["val"].paths == parts["val"].paths  # seeded


def test_nih_unknown_image_and_finding_are_named(tmp_path: Path) -> None:
    root = make_nih(tmp_path)
    next(root.glob("images_*/images/00000003_001.png")).unlink()
    with pytest.raises(
        UserError, match=r"1 labelled in .*train_val_list.txt have no file .*00000003_001\.png"
    ):
        splits(NIHChestXray14DataModule, root)
    csv = root / "Data_Entry_2017_v2020.csv"
    csv.write_text(csv.read_text().replace("Cardiomegaly", "Cardiomegally"))
    with pytest.raises(UserError, match=r"unknown finding\(s\) \['Cardiomegally'\]"):
        splits(NIHChestXray14DataModule, root)


def test_nih_medpeft_lists_with_their_subsets(tmp_path: Path) -> None:
    root = make_nih(tmp_path / "nih")
    names = sorted(p.name for p in root.glob("images_*/images/*.png"))
    lists = tmp_path / "NIH_ChestX-ray"
    lists.mkdir()
    flipped = [[1 - v for v in nih_vector(f)] for _, f in NIH_ROWS for _ in range(2)]  # labels from the lists
    line = [f"{n} {' '.join(map(str, v))}" for n, v in zip(names, flipped, strict=True)]
    for stem, rows in (
        ("train_list", line[:16]),
        ("train_1", line[:2]),
        ("val_list", line[16:20]),
        ("test_list", line[20:]),
    ):
        (lists / f"{stem}.txt").write_text("\n".join(rows))  # no final newline, as MED-PEFT ships them
    parts = splits(NIHChestXray14DataModule, root, split_dir=str(lists), split_train="train_1")
    assert [len(parts[s]) for s in ("train", "val", "test")] == [2, 4, 4]
    assert parts["test"].targets.tolist() == flipped[20:]
    (lists / "val_list.txt").write_text(line[16] + " 7")
    with pytest.raises(UserError, match=r"val_list\.txt: every line should read"):
        splits(NIHChestXray14DataModule, root, split_dir=str(lists))


def test_chexpert_uncertainty_policies_frontal_only_and_patient_val(tmp_path: Path) -> None:
    root = make_chexpert(tmp_path)
    raw = {"1.0": 1.0, "0.0": 0.0, "": 0.0}
    lines = (root / "train.csv").read_text().splitlines()[1:]
    by_path = {}
    for line in lines:
        f = line.split(",")
        by_path[Path(*Path(f[0]).parts[1:])] = [f[13], f[7], f[11], f[10], f[15]]  # MED-PEFT's order
    for policy, uncertain in (("u_ones", 1.0), ("u_zeros", 0.0), ("ignore", float("nan"))):
        parts = splits(CheXpertDataModule, root, uncertainty=policy, val_fraction=0.2)
        for split in ("train", "val"):
            for path, target in zip(parts[split].paths, parts[split].targets.tolist(), strict=True):
                want = [raw.get(v, uncertain) for v in by_path[path.relative_to(root)]]
                np.testing.assert_array_equal(target, want)
        assert not set(parts["train"].groups) & set(parts["val"].groups)
        assert all(p.is_relative_to(root / "valid") for p in parts["test"].paths)
    frontal = splits(CheXpertDataModule, root, frontal_only=True, val_fraction=0.2)
    assert all("frontal" in p.name for s in frontal for p in frontal[s].paths)
    assert len(frontal["train"]) + len(frontal["val"]) == 10
    with pytest.raises(UserError, match=r"dataset.uncertainty='u_half'"):
        CheXpertDataModule(name="t", root=str(root), uncertainty="u_half", **COMMON)
    # one policy per finding (CheXpert paper: U-Ones for Atelectasis / Edema, U-Zeros for Cardiomegaly, ...)
    policy = {"Atelectasis": "u_ones", "Cardiomegaly": "u_zeros", "Consolidation": "ignore", "Edema": "u_ones",
              "Pleural Effusion": "u_zeros"}  # fmt: skip
    per = {"u_ones": 1.0, "u_zeros": 0.0, "ignore": float("nan")}
    parts = splits(CheXpertDataModule, root, uncertainty=policy, val_fraction=0.2)
    for path, target in zip(parts["train"].paths, parts["train"].targets.tolist(), strict=True):
        values = by_path[path.relative_to(root)]
        want = [raw.get(v, per[policy[f]]) for v, f in zip(values, policy, strict=True)]
        np.testing.assert_array_equal(target, want)
    with pytest.raises(UserError, match=r"missing: \['Pleural Effusion'\]"):
        partial = {k: v for k, v in policy.items() if k != "Pleural Effusion"}
        CheXpertDataModule(name="t", root=str(root), uncertainty=partial, **COMMON)


def test_unknown_multilabel_targets_leave_loss_and_metrics() -> None:
    task = Task("multilabel", ("a", "b", "c"))
    logits = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    target = (torch.rand(40, 3, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    target[:2] = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # both classes in every column
    masked = target.clone()
    masked[torch.rand(40, 3, generator=torch.Generator().manual_seed(2)) < 0.3] = float("nan")
    masked[:2] = target[:2]
    known = ~masked.isnan()
    expected = F.binary_cross_entropy_with_logits(logits[known], target[known])
    torch.testing.assert_close(task.loss(logits, masked), expected)
    torch.testing.assert_close(task.loss(logits, target), F.binary_cross_entropy_with_logits(logits, target))
    metrics = task.metrics()
    metrics.update(task.scores(logits), task.metric_target(masked))
    per_class = metrics.compute()["auroc_per_class"]
    for c in range(3):
        k = known[:, c]
        reference = BinaryAUROC()(logits[k, c].sigmoid(), target[k, c].int())
        torch.testing.assert_close(per_class[c], reference)
    full = task.metrics()
    full.update(task.scores(logits), task.metric_target(target))
    assert not torch.allclose(full.compute()["auroc_per_class"], per_class)  # the masking changed something


def test_rsna_one_label_per_patient_and_medpeft_proportions(tmp_path: Path) -> None:
    root = make_rsna(tmp_path, n=24)
    parts = splits(RSNAPneumoniaDataModule, root)
    assert [len(parts[s]) for s in ("train", "val", "test")] == list(medpeft_sizes(24))
    assert medpeft_sizes(26_684) == (22_184, 1_500, 3_000)
    seen = [g for s in parts for g in parts[s].groups]
    assert len(seen) == len(set(seen)) == 24
    for part in parts.values():
        for pid, label in zip(part.groups, part.targets.tolist(), strict=True):
            assert label == int(int(pid[:8], 16) % 3 == 0)  # the patients with box rows
    lists = tmp_path / "RSNA_Pneumonia"
    lists.mkdir()
    ids = sorted(p.name for p in (root / "stage_2_train_images").iterdir())
    for stem, chunk in (("train_list", ids[:16]), ("val_list", ids[16:20]), ("test_list", ids[20:])):
        (lists / f"{stem}.txt").write_text("\n".join(f"stage_2_train_images/{i} 1 " for i in chunk))
    listed = splits(RSNAPneumoniaDataModule, root, split_dir=str(lists))
    assert [len(listed[s]) for s in ("train", "val", "test")] == [16, 4, 4]
    assert listed["val"].targets.tolist() == [1] * 4
    with pytest.raises(UserError, match=r"train_10\.txt is missing"):
        splits(RSNAPneumoniaDataModule, root, split_dir=str(lists), split_train="train_10")


def test_inbreast_birads_and_patient_folds_that_rotate(tmp_path: Path) -> None:
    base = make_inbreast(tmp_path, patients=15)
    folds = [splits(INbreastDataModule, base, fold=k) for k in range(5)]
    everything = set(p for s in folds[0].values() for p in s.paths)
    assert len(everything) == 30  # the footer row is skipped
    tests = [set(f["test"].paths) for f in folds]
    assert set().union(*tests) == everything and sum(map(len, tests)) == 30  # each image tested once
    for k, parts in enumerate(folds):
        patients = {s: set(parts[s].groups) for s in parts}
        assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"])
        assert not patients["val"] & patients["test"]
        assert set(parts["val"].paths) == tests[(k + 1) % 5]  # validation is the next fold
    birads = {"1": 0, "2": 0, "3": 0, "4a": 1, "4b": 1, "4c": 1, "5": 1, "6": 1}
    rows = [r.split(";") for r in (base / "INbreast.csv").read_text().splitlines()[1:] if r.split(";")[5]]
    want = {r[5]: birads[r[7]] for r in rows}
    for part in folds[0].values():
        assert [want[p.name.split("_")[0]] for p in part.paths] == part.targets.tolist()


def test_inbreast_xls_only_asks_for_the_csv(tmp_path: Path) -> None:
    base = make_inbreast(tmp_path, patients=5)
    (base / "INbreast.csv").rename(base / "INbreast.xls")
    with pytest.raises(UserError, match=r"INbreast\.xls found but no INbreast\.csv.*save Sheet1 as CSV"):
        splits(INbreastDataModule, base)
    with pytest.raises(UserError, match=r"dataset.fold=5"):
        INbreastDataModule(name="t", root=str(base), fold=5, **COMMON)


@pytest.mark.parametrize(
    ("flag", "task", "target_shape", "dtype"),
    [
        ("pneumoniamnist", "binary", (16,), torch.int64),
        ("bloodmnist", "multiclass", (16,), torch.int64),
        ("chestmnist", "multilabel", (16, 14), torch.float32),
    ],
)
def test_medmnist_task_types(tmp_path: Path, flag: str, task: str, target_shape: tuple, dtype) -> None:
    make_medmnist(tmp_path, flag, size=64)
    dm = MedMNISTDataModule(name=f"{flag}_64", root=str(tmp_path), **COMMON)
    dm.setup()
    assert dm.task_type == task and len(dm.class_names) == {"pneumoniamnist": 2, "bloodmnist": 8}.get(
        flag, 14
    )
    targets = dm.datasets["test"].targets
    assert targets.shape == target_shape and targets.dtype == dtype
    image, _ = dm.datasets["train"][0]
    assert image.shape == (3, 32, 32)  # 64 px resized to the backbone's size; gray repeated to RGB


def test_medmnist_errors_fraction_and_organ_flips(tmp_path: Path) -> None:
    path = make_medmnist(tmp_path, "pneumoniamnist")
    dm = MedMNISTDataModule(name="pneumoniamnist", root=str(path), label_fraction=0.5, **COMMON)
    dm.setup()
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 16
    with pytest.raises(UserError, match=r"dataset.name='organmnist3d' is not a 2D MedMNIST subset"):
        MedMNISTDataModule(name="organmnist3d", root=str(tmp_path), **COMMON)
    assert MedMNISTDataModule(name="organamnist", root=str(tmp_path), **COMMON).hflip is False
    arrays = dict(np.load(path))
    del arrays["val_labels"]
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=r"lacks the keys \['val_labels'\]"):
        MedMNISTDataModule(name="pneumoniamnist", root=str(tmp_path), **COMMON).check()
