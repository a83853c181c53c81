"""Bad image files at the reader level: each decodes to the right grayscale values or gives the documented
error naming the file, also from inside a DataLoader worker and a training run (never a hang or a traceback)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from src.data.image_files import ImageFileDataset, read_image
from src.errors import UserError
from src.train import train
from tests.conftest import compose_train
from tests.test_predict import write_dicom

RAMP = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every 8-bit value once
RGB = np.stack([RAMP, RAMP[::-1], np.full_like(RAMP, 200)], -1)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, the conversion the reader documents for colour images."""
    return np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)


def palette_image() -> Image.Image:
    image = Image.fromarray(RAMP % 4, mode="P")
    image.putpalette([0, 0, 0, 90, 90, 90, 255, 255, 255, 255, 0, 0] + [0] * (256 - 4) * 3)
    return image


def sixteen_bit() -> Image.Image:
    return Image.fromarray(RAMP.astype(np.uint16) * 16 + 1000)  # mode I;16


def dicom_without_pixels(path: Path) -> None:
    write_dicom(path, RAMP.astype(np.uint16))
    ds = pydicom.dcmread(str(path))
    del ds.PixelData
    ds.save_as(str(path))


def cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


# name, how to write the file, and either the expected uint8 pixels or the expected error.
CASES: list[tuple[str, Callable[[Path], object], np.ndarray | str]] = [
    ("gray.png", lambda p: Image.fromarray(RAMP).save(p), RAMP),
    ("rgb.png", lambda p: Image.fromarray(RGB).save(p), luma(RGB)),
    # Alpha is ignored: a fully transparent pixel keeps its colour's grey value.
    ("rgba.png", lambda p: Image.fromarray(np.dstack([RGB, RAMP[::-1]])).save(p), luma(RGB)),
    ("gray_alpha.png", lambda p: Image.fromarray(np.dstack([RAMP, RAMP[::-1]]), "LA").save(p), RAMP),
    ("palette.png", lambda p: palette_image().save(p), np.array([0, 90, 255, 76])[RAMP % 4]),
    # 16-bit: its own range 1000..5080 stretched to 0..255, which gives back the 8-bit ramp.
    ("gray16.png", lambda p: sixteen_bit().save(p), RAMP),
    ("bilevel.png", lambda p: Image.fromarray(RAMP > 127).save(p), np.where(RAMP > 127, 255, 0)),
    ("truncated.png", lambda p: p.write_bytes(cut(encoded(Image.fromarray(RAMP), "PNG"))), "truncated"),
    ("truncated.jpg", lambda p: p.write_bytes(cut(encoded(Image.fromarray(RGB), "JPEG"))), "truncated"),
    ("zero_bytes.png", lambda p: p.write_bytes(b""), "empty file"),
    ("zero_bytes.dcm", lambda p: p.write_bytes(b""), "empty file"),
    ("text.png", lambda p: p.write_text("not an image"), "cannot identify"),
    ("no_pixels.dcm", dicom_without_pixels, r"no pixel data \(Secondary Capture\)"),
    (
        "truncated.dcm",
        lambda p: p.write_bytes(cut(write_dicom(p, RAMP.astype(np.uint16)).read_bytes())),
        r"truncated: the file ends after 547 bytes, inside an element",
    ),
    (
        "truncated_pixels.dcm",
        lambda p: p.write_bytes(write_dicom(p, RAMP.astype(np.uint16)).read_bytes()[:-100]),
        r"truncated: 412 of 512 bytes of pixel data",
    ),
    ("not_dicom.dcm", lambda p: p.write_text("not a dicom file"), r"not a DICOM file\. "),
]


@pytest.mark.parametrize(("name", "write", "expected"), CASES, ids=[c[0] for c in CASES])
def test_reader(
    name: str, write: Callable[[Path], object], expected: np.ndarray | str, tmp_path: Path
) -> None:
    path = tmp_path / name
    write(path)
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected) as err:
            read_image(path, 16)
        assert str(path) in str(err.value)
    else:
        image = read_image(path, 16)  # 16 px: no resize, so the values are the decoder's
        assert image.dtype == torch.uint8 and image.shape == (16, 16)
        np.testing.assert_array_equal(image.numpy(), expected.astype(np.uint8))


def test_error_in_a_dataloader_worker_is_the_readers_message(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(RAMP).save(good)
    bad.write_bytes(cut(encoded(Image.fromarray(RAMP), "PNG")))
    dataset = ImageFileDataset([good, bad], torch.zeros(2), 16, lambda x: x, hflip=False)
    with pytest.raises(UserError) as err:
        list(DataLoader(dataset, batch_size=1, num_workers=1))
    message = str(err.value)
    assert message.startswith(f"cannot read image {bad}") and "Traceback" not in message


def test_training_with_a_bad_file_stops_with_one_paragraph_naming_it(tmp_path: Path) -> None:
    images = tmp_path / "sz" / "CXR_png"
    images.mkdir(parents=True)
    for i in range(20):
        Image.fromarray(np.roll(RAMP, i)).resize((32, 32)).save(images / f"CHNCXR_{i:04d}_{i % 2}.png")
    bad = images / "CHNCXR_0007_1.png"
    bad.write_bytes(cut(bad.read_bytes()))
    cfg = compose_train(
        [
            "dataset=sz_cxr",
            f"dataset.root={tmp_path / 'sz'}",
            "debug=fdr",
            "dataset.num_workers=1",
            "dataset.batch_size=16",
            "logger=none",
        ],
        tmp_path,
    )
    with pytest.raises(UserError) as err:
        train(cfg)
    assert str(err.value).startswith(f"cannot read image {bad}") and "\n" not in str(err.value)
