"""`python -m src.predict`: several adapters over one backbone, images and DICOMs in, one CSV out."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from safetensors.torch import load_file, save_file

from src.adapter import load_adapter
from src.data.image_files import read_dicom, read_image
from src.data.radiographs import FINDINGS, render_split
from src.errors import UserError
from src.predict import predict
from src.tasks import Task
from src.train import build_model, train


def write_dicom(path: Path, pixels: np.ndarray, monochrome1: bool = False, slope: float = 1.0) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_rescale_and_monochrome1(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 4000, 16), (16, 1))
    normal = read_dicom(write_dicom(tmp_path / "a.dcm", ramp), 16)
    inverted = read_dicom(write_dicom(tmp_path / "b.dcm", ramp, monochrome1=True, slope=2.0), 16)
    assert normal[0, 0] == 0 and normal[0, -1] == 255
    assert torch.equal(inverted, 255 - normal)
    assert torch.equal(read_image(tmp_path / "a.dcm", 16), normal)
    bad = tmp_path / "empty.dcm"
    ds = pydicom.dcmread(str(tmp_path / "a.dcm"))
    del ds.PixelData
    ds.save_as(str(bad))
    with pytest.raises(UserError, match=r"empty\.dcm"):
        read_dicom(bad, 16)


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory) -> tuple[dict[str, str], Path]:
    """A binary and a multilabel task trained briefly on the default (pocket) backbone, and input images."""
    from tests.conftest import TINY_DATA, compose_train

    root = tmp_path_factory.mktemp("predict")
    adapters = {}
    for name, dataset in (("opacity", "synthetic"), ("findings", "synthetic_multilabel")):
        cfg = compose_train([*TINY_DATA, "logger=none", "debug=limit", f"dataset={dataset}"], root / name)
        adapters[name] = train(cfg)["adapter_path"]
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    present = torch.zeros(5, len(FINDINGS), dtype=torch.bool)
    present[::2, 0] = True
    for i, img in enumerate(render_split(present, FINDINGS, 96, seed=3).numpy()):
        Image.fromarray(img).save(images / ("sub" if i % 2 else "") / f"img{i}.png")
    write_dicom(
        images / "scan.dcm", render_split(present[:1], FINDINGS, 64, seed=4)[0].numpy().astype(np.uint16) * 16
    )
    return adapters, images


def test_predict_equals_each_adapter_loaded_alone(two_adapters, tmp_path: Path) -> None:
    adapters, images = two_adapters
    files, probs, classes = predict(adapters, [str(images)], batch_size=4)
    assert len(files) == 6 and {"scan.dcm", "img1.png"} <= {f.name for f in files}
    assert classes == {"opacity": ["normal", "opacity"], "findings": ["opacity", "cavity", "effusion"]}
    pixels = torch.stack([read_image(p, 64) for p in files]).float().div(255).sub(0.5).div(0.5)
    pixels = pixels.unsqueeze(1).expand(-1, 3, -1, -1)
    for name, p in probs.items():
        path = adapters[name]
        meta = json.loads(Path(path).with_name("metrics.json").read_text())
        assert meta["adapter_path"] == path
        from tests.conftest import compose_train

        cfg = compose_train(["dataset=synthetic_multilabel"] if name == "findings" else [], tmp_path)
        task = Task("multilabel" if name == "findings" else "binary", tuple(classes[name]))
        model, _ = build_model(cfg, task)
        load_adapter(model, path)
        with torch.no_grad():
            logits = model.eval()(pixels)
        expected = logits.sigmoid() if name == "findings" else logits.softmax(-1)
        torch.testing.assert_close(p, expected, atol=1e-5, rtol=1e-4)


def test_merge_gives_the_same_predictions(two_adapters) -> None:
    adapters, images = two_adapters
    _, plain, _ = predict(adapters, [str(images)])
    _, merged, _ = predict(adapters, [str(images)], merge=True)
    for name in plain:
        torch.testing.assert_close(merged[name], plain[name], atol=1e-5, rtol=1e-4)


def test_predict_cli_writes_the_csv(two_adapters, tmp_path: Path) -> None:
    adapters, images = two_adapters
    out = tmp_path / "p.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.predict",
            "adapters={" + ",".join(f"{k}:{v}" for k, v in adapters.items()) + "}",
            f"inputs=[{images}]",
            f"out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    assert set(rows[0]) == {
        "path",
        "opacity:normal",
        "opacity:opacity",
        "findings:opacity",
        "findings:cavity",
        "findings:effusion",
    }
    assert abs(float(rows[0]["opacity:normal"]) + float(rows[0]["opacity:opacity"]) - 1) < 1e-5


def test_predict_refuses_foreign_code_and_missing_inputs(two_adapters, tmp_path: Path) -> None:
    adapters, images = two_adapters
    with pytest.raises(UserError, match="does not exist"):
        predict(adapters, [str(tmp_path / "nothing.png")])
    from safetensors import safe_open

    with safe_open(adapters["opacity"], framework="pt") as f:
        meta = dict(f.metadata())
    meta["strategy_config"] = json.dumps({"_target_": "os.system", "command": "touch pwned"})
    evil = tmp_path / "evil.safetensors"
    save_file(load_file(adapters["opacity"]), str(evil), metadata=meta)
    with pytest.raises(UserError, match="not a medpeft strategy"):
        predict([str(evil)], [str(images)])
    assert not Path("pwned").exists()


def test_predict_cli_keeps_the_good_files_and_lists_the_refused(two_adapters, tmp_path: Path) -> None:
    from src.predict import main as predict_main
    from tests.conftest import compose_train
    from tests.test_dicom_files import multiframe

    adapters, images = two_adapters
    folder = tmp_path / "in"
    folder.mkdir()
    good = Image.open(next(images.glob("*.png")))
    good.save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    cine = multiframe(folder / "IM000001")  # extensionless, 3 frames
    out = tmp_path / "p.csv"
    overrides = [f"adapters=[{adapters['opacity']}]", f"inputs=[{folder}]", f"out={out}", "dicom_frames=all"]
    with pytest.raises(SystemExit) as exit_:  # in-process: the entry point minus the interpreter start
        predict_main.__wrapped__(compose_train(overrides, config_name="predict"))
    assert f"{out}.errors.csv" in str(exit_.value.code) and exit_.value.code != 0
    assert [r["path"] for r in csv.DictReader(out.open())] == [
        f"{cine}#1",
        f"{cine}#2",
        f"{cine}#3",
        str(folder / "good.png"),
    ]
    with Path(f"{out}.errors.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == [{"file": str(folder / "empty.png"), "reason": "empty file"}]
