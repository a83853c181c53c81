"""DICOMs as a hospital hands them over, built here: VOI LUTs and window functions checked against the
standard's formulas, palette colour, multi-frame policies, extensionless PACS / CD trees with a DICOMDIR,
preamble-less files, and predict's refusal list."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset
from pydicom.uid import MediaStorageDirectoryStorage

from src.data.image_files import UnreadableImage, image_files, read_image
from src.data.image_folder import ImageFolderDataModule
from src.data.table import CSVDataModule
from src.errors import UserError
from src.predict_inputs import check_options, collect_inputs, decode_inputs, write_errors
from tests.test_predict import write_dicom

MODULE = {"name": "dicoms", "mean": (0.5,) * 3, "std": (0.5,) * 3, "image_size": 16}
RAMP = np.arange(256, dtype=np.uint16).reshape(16, 16) * 16  # 0..4080, 12 bits stored


def edited(path: Path, pixels: np.ndarray = RAMP, **attrs) -> Path:
    """A 12-bit MONOCHROME2 DICOM with ``attrs`` set (e.g. a window, a VOI LUT Sequence)."""
    write_dicom(path, pixels)
    ds = pydicom.dcmread(path)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def test_voi_lut_sequence_wins_over_the_window(tmp_path: Path) -> None:
    # A non-linear VOI LUT (square-root curve, 16 bits per entry) as an edited CR carries, plus a window
    # that must be ignored (the LUT is the first VOI); first mapped value 0, 4096 entries.
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", lut.tobytes())
    path = edited(tmp_path / "cr.dcm", VOILUTSequence=[item], WindowCenter=100, WindowWidth=50)
    expected = np.rint(lut[RAMP] / 65535 * 255)
    np.testing.assert_array_equal(read_image(path, 16).numpy(), expected)


def test_window_functions_follow_the_standard(tmp_path: Path) -> None:
    x = RAMP.astype(np.float64)
    center, width = 2000.0, 1000.0
    # PS3.3 C.11.2.1.3.1 SIGMOID (mammography): y = 1 / (1 + exp(-4 (x - c) / w)) over the output range.
    sigmoid = 1 / (1 + np.exp(-4 * (x - center) / width))
    # C.11.2.1.3.2 LINEAR_EXACT: (x - c) / w + 0.5, clipped.
    exact = np.clip((x - center) / width + 0.5, 0, 1)
    # C.11.2.1.2.1 LINEAR (default), first of several windows: ((x - (c - 0.5)) / (w - 1) + 0.5).
    linear = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    cases = {
        "sigmoid": ({"VOILUTFunction": "SIGMOID"}, sigmoid),
        "exact": ({"VOILUTFunction": "LINEAR_EXACT"}, exact),
        "several": ({"WindowCenter": [center, 500.0], "WindowWidth": [width, 200.0]}, linear),
        "mono1": ({"PhotometricInterpretation": "MONOCHROME1"}, 1 - linear),
    }
    for name, (attrs, expected) in cases.items():
        attrs = {"WindowCenter": center, "WindowWidth": width, **attrs}
        image = read_image(edited(tmp_path / f"{name}.dcm", **attrs), 16).numpy()
        np.testing.assert_allclose(image, np.rint(expected * 255), atol=1, err_msg=name)


def palette_dicom(path: Path, bits: int) -> tuple[Path, np.ndarray]:
    """An 8-bit PALETTE COLOR image whose index i maps to (i, 255 - i, 128) at ``bits`` per entry."""
    write_dicom(path, np.zeros((16, 16)))
    ds = pydicom.dcmread(path)
    index = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = index.tobytes()
    scale = 257 if bits == 16 else 1
    channels = (np.arange(256), 255 - np.arange(256), np.full(256, 128))
    for colour, values in zip(("Red", "Green", "Blue"), channels, strict=True):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [256, 0, bits])
        data = (values * scale).astype(np.uint16 if bits == 16 else np.uint8)  # 8-bit entries packed
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", data.tobytes())
    ds.save_as(path)
    return path, np.stack([index, 255 - index, np.full_like(index, 128)], -1)


@pytest.mark.parametrize("bits", [8, 16])
def test_palette_colour_is_applied(tmp_path: Path, bits: int) -> None:
    path, expected = palette_dicom(tmp_path / f"pal{bits}.dcm", bits)
    np.testing.assert_array_equal(read_image(path, 16, "rgb").numpy(), expected)


def multiframe(path: Path, n: int = 3) -> Path:
    """``n`` frames, frame k filled with the value 1000 k (distinct after the image's own range)."""
    frames = np.stack([np.full((16, 16), 1000 * k, dtype=np.uint16) for k in range(n)])
    frames[:, 0, 0] = 0  # each frame spans 0..1000 k, so its display values tell the frames apart
    frames[:, 0, 1] = 4000
    write_dicom(path, frames[0])
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = n
    ds.PixelData = frames.tobytes()
    ds.save_as(path)
    return path


def test_multiframe_policies(tmp_path: Path) -> None:
    path = multiframe(tmp_path / "cine")
    with pytest.raises(
        UnreadableImage, match=r"has 3 frames; choose which with dataset\.dicom_frames"
    ) as err:
        read_image(path, 16)
    assert str(path) in str(err.value)
    level = {k: round(1000 * k / 4000 * 255) for k in range(3)}
    assert read_image(path, 16, frames="first")[5, 5] == level[0]
    assert read_image(path, 16, frames="middle")[5, 5] == level[1]
    decoded = decode_inputs([path], 16, ["gray"], frames="all")
    assert [str(r) for r in decoded.rows] == [f"{path}#{k}" for k in (1, 2, 3)]
    assert decoded.pixels["gray"][:, 5, 5].tolist() == [level[k] for k in range(3)]
    with pytest.raises(UserError, match=r"dataset.dicom_frames='all'.*src.predict"):
        ImageFolderDataModule(root=str(tmp_path), dicom_frames="all", **MODULE).validate()


def pacs_tree(root: Path) -> dict[str, list[Path]]:
    """A CD export: extensionless DICOMs in PT/ST/SE folders, a DICOMDIR, a README; two classes."""
    made: dict[str, list[Path]] = {}
    for c, label in enumerate(("normal", "effusion")):
        for i in range(4):
            path = root / label / "PT000000" / f"ST00000{i}" / "SE000000" / f"IM00000{i}"
            path.parent.mkdir(parents=True, exist_ok=True)
            made.setdefault(label, []).append(write_dicom(path, np.roll(RAMP, 16 * i + c)))
        dicomdir = root / label / "DICOMDIR"
        write_dicom(dicomdir, RAMP)
        ds = pydicom.dcmread(dicomdir)
        ds.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
        ds.save_as(dicomdir)
        (root / label / "README").write_text("exported by a PACS")
    return made


def test_extensionless_trees_are_found_by_content(tmp_path: Path) -> None:
    made = pacs_tree(tmp_path / "cd")
    everything = sorted(made["normal"] + made["effusion"])
    assert image_files(tmp_path / "cd") == everything
    assert collect_inputs([str(tmp_path / "cd")]) == everything
    module = ImageFolderDataModule(root=str(tmp_path / "cd"), split_fractions=(0.5, 0.25, 0.25), **MODULE)
    splits = module.index(tmp_path / "cd")
    assert sorted(p for s in splits.values() for p in s.paths) == everything
    assert module.class_names == ("effusion", "normal")
    # A preamble-less file (old ACR-NEMA style export) is DICOM by content too.
    bare = tmp_path / "bare" / "IMG0001"
    bare.parent.mkdir()
    ds = pydicom.dcmread(made["normal"][0])
    ds.preamble = None
    ds.save_as(bare, enforce_file_format=False)
    assert bare.read_bytes()[128:132] != b"DICM" and image_files(bare.parent) == [bare]
    np.testing.assert_array_equal(read_image(bare, 16).numpy(), read_image(made["normal"][0], 16).numpy())


def test_csv_dataset_reads_extensionless_dicoms(tmp_path: Path) -> None:
    made = pacs_tree(tmp_path / "cd")
    table = tmp_path / "labels.csv"
    rows = [(p.relative_to(tmp_path / "cd"), label) for label, paths in made.items() for p in paths]
    table.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    module = CSVDataModule(csv=str(table), root=str(tmp_path / "cd"), cache=False, num_workers=0, **MODULE)
    module.check()
    dataset = module.build_split("train")
    image, _ = dataset[0]
    assert image.shape[-2:] == (16, 16) and torch.isfinite(image).all()


def test_predict_inputs_keep_the_good_files_and_list_the_refused(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    good = write_dicom(folder / "a.dcm", RAMP)
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "text.dcm").write_text("not a dicom")
    cine = multiframe(folder / "cine")
    files = collect_inputs([str(folder)])
    decoded = decode_inputs(files, 16, ["gray"])
    assert decoded.rows == [good] and decoded.pixels["gray"].shape == (1, 16, 16)
    assert dict(decoded.refused) == {
        str(folder / "empty.dcm"): "empty file",
        str(folder / "text.dcm"): "not a DICOM file",
        str(cine): "has 3 frames; choose which with dicom_frames=first, middle or all",
    }
    errors = write_errors(tmp_path / "p.csv", decoded.refused)
    assert errors == tmp_path / "p.csv.errors.csv"
    with errors.open(newline="") as f:
        assert [tuple(row) for row in csv.reader(f)] == [("file", "reason"), *decoded.refused]
    with pytest.raises(UserError, match=r"cannot read image .*cine: has 3 frames.*on_bad_image=skip"):
        decode_inputs(files, 16, ["gray"], on_bad_image="error")


def test_training_skip_names_each_file_with_its_reason(tmp_path: Path) -> None:
    made = pacs_tree(tmp_path / "cd")
    empty = tmp_path / "cd" / "normal" / "empty.dcm"  # an empty extensionless file is no image at all
    empty.write_bytes(b"")
    multiframe(made["effusion"][0])
    module = ImageFolderDataModule(
        root=str(tmp_path / "cd"), on_bad_image="skip", split_fractions=(0.5, 0.25, 0.25), **MODULE
    )
    module.check()
    for split in ("train", "val", "test"):
        module.build_split(split)
    reasons = {Path(p): message for p, message in module.bad_images}
    assert set(reasons) == {empty, made["effusion"][0]}
    assert reasons[empty].endswith(": empty file. Replace or remove the file.")
    assert "has 3 frames; choose which with dataset.dicom_frames" in reasons[made["effusion"][0]]


def test_enhanced_multiframe_takes_the_frames_own_window(tmp_path: Path) -> None:
    # Enhanced objects carry rescale / window per frame in functional groups (PS3.3 C.7.6.16): the shared
    # group rescales every frame by 2; frame 2's window centres on its own values.
    path = multiframe(tmp_path / "enhanced")
    ds = pydicom.dcmread(path)
    del ds.RescaleSlope, ds.RescaleIntercept
    shared, transform = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 2, 0, "US"
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(3):
        window, item = Dataset(), Dataset()
        window.WindowCenter, window.WindowWidth, window.VOILUTFunction = 2000 * k + 1, 1000, "LINEAR_EXACT"
        item.FrameVOILUTSequence = [window]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.save_as(path)
    # Frame 1 (middle) stores 1000 -> 2000 after rescale, window centre 2001, width 1000 (LINEAR_EXACT).
    expected = np.clip((2000 - 2001) / 1000 + 0.5, 0, 1) * 255
    assert abs(int(read_image(path, 16, frames="middle")[5, 5]) - expected) <= 1


def test_predict_options_are_checked_naming_the_key() -> None:
    check_options("skip", "all")
    with pytest.raises(UserError, match=r"on_bad_image='sometimes' must be skip .* or error"):
        check_options("sometimes", "all")
    with pytest.raises(UserError, match=r"dicom_frames='every' must be one of error, first, middle, all"):
        check_options("error", "every")
