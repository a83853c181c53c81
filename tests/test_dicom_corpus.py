"""Real DICOMs nobody here wrote: every file of pydicom's bundled test files plus the pydicom-data package
(its files ship in the wheel; pydicom's downloader is never used) goes through the reader. Each is
decoded, skipped as a DICOMDIR, or refused with the reason in the table below; the grayscale ones are
compared with pydicom's own ``apply_modality_lut`` + ``apply_voi_lut``, the colour ones with the
uncompressed RGB original they were encoded from."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ImplicitVRLittleEndian

from src.data.dicom import is_dicom, is_dicomdir
from src.data.image_files import UnreadableImage, image_files, read_image

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_DATA = Path(importlib.util.find_spec("data_store").origin).parent / "data"
ROOTS = (PYDICOM_FILES, PYDICOM_DATA)
SIZE = 48

# Files that give no image, and the reason a user reads (a regex); every other DICOM decodes.
REFUSED = {
    "ExplVR_BigEndNoMeta.dcm": r"no pixel data \(RT Ion Plan\)",
    "ExplVR_LitEndNoMeta.dcm": r"no pixel data \(RT Ion Plan\)",
    "JPEG-lossy.dcm": r"cannot decode its JPEG Extended \(Process 2 and 4\) pixel data",  # corrupt stream
    "JPEG2000-embedded-sequence-delimiter.dcm": r"cannot decode its JPEG 2000 Image Compression pixel data",
    "MR_truncated.dcm": r"truncated: 8130 of 8192 bytes of pixel data",
    "UN_sequence.dcm": r"no pixel data \(CT\)",
    "badVR.dcm": r"damaged image description: invalid literal",
    "empty_charset_LEI.dcm": r"no pixel data \(unknown kind of object\)",
    "meta_missing_tsyntax.dcm": r"damaged image description: no Rows element",
    "nested_priv_SQ.dcm": r"damaged image description: no Rows element",
    "no_meta_group_length.dcm": r"no pixel data \(RT\)",
    "priv_SQ.dcm": r"no pixel data \(MR\)",
    "reportsi.dcm": r"no pixel data \(Basic Text SR\)",
    "reportsi_with_empty_number_tags.dcm": r"no pixel data \(Basic Text SR\)",
    "rtplan.dcm": r"no pixel data \(RT Plan\)",
    "rtplan_truncated.dcm": r"truncated: the file ends after 2129 bytes, inside an element",
    "rtstruct.dcm": r"no pixel data \(RT Structure Set\)",
    "test-SR.dcm": r"no pixel data \(Comprehensive SR\)",
    "waveform_ecg.dcm": r"no pixel data \(12-lead ECG Waveform\)",
    "emri_small_jpeg_2k_lossless_too_short.dcm": r"truncated: the file ends after \d+ bytes, inside an element",
    # A DICOMDIR that carries a .dcm suffix is listed by suffix, then refused for what it is.
    # A stray byte before its first element: pydicom cannot parse it either (listed for its suffix).
    "no_meta.dcm": r"not a DICOM file",
    "DICOMDIR-empty.dcm": r"a DICOMDIR \(the index of a DICOM media folder\), no image",
}
# pydicom's DICOMDIR test tree: 50 CT headers whose pixel data was stripped to keep the package small.
STRIPPED = re.compile(r"TINY_ALPHA/PT000000/ST000000/SE000000/IM\w+$")
DICOMDIRS = {"DICOMDIR", "DICOMDIR-nopatient", "DICOMDIR-implicit", "DICOMDIR-nooffset"}
DICOMDIRS |= {"DICOMDIR-reordered", "DICOMDIR-bigEnd"}
# The corpus's READMEs, text dumps, JSON, a gzip and an ICC profile.
NOT_DICOM = {"README.txt", "README", "rtplan.dump", "rtstruct.dump", "test1.json", "test_PN.json"}
NOT_DICOM |= {"zipMR.gz", "crayons.icc"}
N_DECODED = 156
N_FILES = 244


def corpus() -> list[Path]:
    return sorted(
        p for root in ROOTS for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def display_reference(path: Path) -> np.ndarray | None:
    """The display image of a single-frame grayscale file from pydicom's LUT functions, scaled from the
    output range the standard gives the VOI stage (PS3.3 C.11.2: the window maps onto the range of the
    stored bits after rescale; a VOI LUT onto 0..2^n-1, n its bits per entry), else the image's own range;
    MONOCHROME1 inverted. None for colour and multi-frame files."""
    ds = pydicom.dcmread(path, force=True)
    if ds.get("SamplesPerPixel", 1) != 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        return None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return None
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # the corpus's preamble-less files
    stored = ds.pixel_array
    out = apply_voi_lut(apply_modality_lut(stored, ds), ds).astype(np.float64)
    if ds.get("VOILUTSequence"):
        lo, hi = 0, 2 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        if ds.get("ModalityLUTSequence"):
            lo, hi = 0, 2 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
        elif ds.PixelRepresentation == 0:
            lo, hi = 0, 2**ds.BitsStored - 1
        else:
            lo, hi = -(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1) - 1
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        lo, hi = lo * slope + intercept, hi * slope + intercept
    else:
        lo, hi = out.min(), out.max()
    unit = np.clip((out - lo) / (hi - lo), 0, 1) if hi != lo else np.zeros_like(out)
    return 1 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit


def resized(unit: np.ndarray) -> np.ndarray:
    """8-bit display values at SIZE x SIZE, with the bilinear resize the reader documents."""
    image = Image.fromarray(np.rint(unit * 255).astype(np.uint8))
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR))


def test_every_corpus_file_is_decoded_or_refused_with_its_reason() -> None:
    files = corpus()
    assert len(files) == N_FILES, "pydicom or pydicom-data changed: review the table"
    listed = {p for root in ROOTS for p in image_files(root)}
    decoded, compared, seen_refused = 0, 0, set()
    for path in files:
        rel = path.relative_to(PYDICOM_FILES if PYDICOM_FILES in path.parents else PYDICOM_DATA)
        if path.name in NOT_DICOM:
            assert not is_dicom(path) and path not in listed, rel
            continue
        if path.name in DICOMDIRS:
            assert is_dicomdir(path) and path not in listed, rel
            continue
        if path.name != "no_meta.dcm":
            assert is_dicom(path) and path in listed, f"{rel} is DICOM but was not found by content"
        expected = "no pixel data \\(CT\\)" if STRIPPED.search(str(rel)) else REFUSED.get(path.name)
        if expected:
            with pytest.raises(UnreadableImage) as err:
                read_image(path, SIZE, frames="first")
            assert re.search(expected, err.value.reason), f"{rel}: {err.value.reason}"
            assert str(path) in str(err.value)
            seen_refused.add(path.name if path.name in REFUSED else "stripped")
            continue
        image = read_image(path, SIZE, frames="first").numpy()
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8, rel
        decoded += 1
        reference = display_reference(path)
        if reference is not None:
            np.testing.assert_allclose(image, resized(reference), atol=1, err_msg=str(rel))
            compared += 1
    assert decoded == N_DECODED and seen_refused == {*REFUSED, "stripped"}
    assert compared >= 60  # the single-frame grayscale share of the corpus


LOSSLESS_RGB = [
    "SC_rgb_16bit.dcm",
    "SC_rgb_32bit.dcm",
    "SC_rgb_expb.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit.dcm",
    "SC_rgb_gdcm_KY.dcm",  # JPEG 2000 lossless
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless
    "SC_rgb_gdcm2k_uncompressed.dcm",
]
# Lossy or YBR-coded versions: YBR_FULL / YBR_FULL_422 must come out as RGB (a missed conversion is off by
# ~100 on average); JPEG / JPEG-LS lossy add a few levels.
LOSSY_OR_YBR = [
    "SC_ybr_full_uncompressed.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "SC_rgb_dcmtk_+eb+cy+n2.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_dcmtk_+eb+cr.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jls_lossy_line.dcm",
]


def test_colour_files_match_their_rgb_original() -> None:
    original = pydicom.dcmread(PYDICOM_DATA / "SC_rgb.dcm").pixel_array.astype(np.float64)  # 100 x 100
    size = original.shape[0]
    for name in LOSSLESS_RGB + LOSSY_OR_YBR:
        path = next(p for root in ROOTS for p in root.glob(name))
        image = read_image(path, size, "rgb").numpy().astype(np.float64)
        diff = np.abs(image - original)
        if name in LOSSLESS_RGB:
            assert diff.max() == 0, name
        else:
            assert diff.mean() < 3, (name, diff.mean())
