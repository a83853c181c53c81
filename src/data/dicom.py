"""DICOM files as a PACS or a CD export hands them over, turned into display pixels or refused with a reason.

* Found by content, not by name: the ``DICM`` marker at byte 128 (PS3.10 files) or, for preamble-less
  files (old ACR-NEMA style exports), a first element of group 0002 / 0008 that pydicom parses.
  ``DICOMDIR`` (the media directory of a CD, no image) is skipped when listing folders.
* Compressed transfer syntaxes are decoded by pydicom's decoder plugins; this project depends on
  pylibjpeg + pylibjpeg-libjpeg / -openjpeg / -rle rather than python-gdcm: on pydicom's test files plus
  pydicom-data the reader decodes 156 files with pylibjpeg against 155 with GDCM (GDCM refuses 12-bit JPEG
  extended, ``JPGExtended.dcm``) and installs in 17 MB against 42 MB; GDCM decodes a 2048² JPEG-lossless
  frame ~1.35x faster, a cost paid once per cache build (bench/README.md).
* Intensities follow the standard's pipeline with pydicom's own functions (PS3.3 C.11):
  :func:`~pydicom.pixels.apply_modality_lut` (rescale or Modality LUT Sequence), then
  :func:`~pydicom.pixels.apply_voi_lut` with the first VOI (VOI LUT Sequence, else the first window with
  its LINEAR / LINEAR_EXACT / SIGMOID function), scaled from that VOI's output range to 0..255; without
  any VOI the image's own range. MONOCHROME1 is inverted after the VOI so that dense tissue is bright.
  Enhanced multi-frame objects carry rescale and window per frame in functional groups; those of the
  chosen frame are applied. Palette colour goes through :func:`~pydicom.pixels.apply_color_lut`; YBR is
  converted to RGB by pydicom's decoders.
* Multi-frame files follow ``dicom_frames``: ``error`` (refuse, naming the option), ``first``, ``middle``
  or ``all`` (every frame, for ``src.predict``).

Every refusal is an :class:`~src.data.image_files.UnreadableImage` whose ``reason`` is a short phrase a
user can act on (empty file, truncated, not a DICOM file, which kind of object holds no image, ...).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
FRAME_POLICIES = ("error", "first", "middle", "all")
DICOMDIR_NAME = "DICOMDIR"
MEDIA_DIRECTORY_UID = "1.2.840.10008.1.3.10"
# The first tag of a preamble-less file: group 0002 (file meta) or 0008 (identification), either byte order.
_BARE_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
_MISSING = re.compile(r"has no attribute '(\w+)'")
_SHORT_PIXELS = re.compile(r"less than expected \((\d+) vs (\d+) bytes\)")


class DicomRefused(Exception):
    """A DICOM that gives no image; ``reason`` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def has_dicom_marker(path: Path) -> bool:
    """True when the file has the PS3.10 preamble and ``DICM`` marker."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def is_dicom(path: Path) -> bool:
    """True when ``path`` holds DICOM by content: the ``DICM`` marker at byte 128, or a preamble-less
    data set whose first element pydicom parses (group 0002 or 0008, little or big endian)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8 or head[:2] not in _BARE_STARTS:
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:  # any parse failure means "not DICOM" for this sniff
        return False
    return any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "StudyInstanceUID"))


def is_dicomdir(path: Path) -> bool:
    """True for a DICOMDIR (media directory): by its reserved name or its SOP class."""
    if Path(path).name.upper() == DICOMDIR_NAME:
        return True
    if not has_dicom_marker(path):
        return False
    from pydicom.filereader import read_file_meta_info

    try:
        return str(read_file_meta_info(path).get("MediaStorageSOPClassUID", "")) == MEDIA_DIRECTORY_UID
    except Exception:  # unreadable meta: let the decoder name the problem
        return False


def object_kind(ds) -> str:
    """What a DICOM object is, in words: its SOP class name without "Storage" (e.g. "Basic Text SR",
    "RT Structure Set", "12-lead ECG Waveform"), else its modality."""
    uid = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    name = getattr(uid, "name", "") if uid else ""
    if name and name != str(uid):
        return name.removesuffix(" Storage").removesuffix(" Image")
    modality = ds.get("Modality")
    return f"{modality} object" if modality else "unknown kind of object"


def _read(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    size = Path(path).stat().st_size
    if size == 0:
        raise DicomRefused("empty file")
    marked = has_dicom_marker(path)
    try:
        ds = pydicom.dcmread(path, force=not marked)
    except InvalidDicomError:
        raise DicomRefused("not a DICOM file") from None
    except (EOFError, struct.error):
        raise DicomRefused(f"truncated: the file ends after {size} bytes, inside its header") from None
    except OSError as err:
        raise DicomRefused(f"unreadable: {err.strerror or err}") from None
    except Exception as err:  # pydicom raises many types on a damaged header
        raise DicomRefused(f"damaged DICOM header: {str(err).splitlines()[0]}") from None
    if not marked and not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "PixelData")):
        raise DicomRefused("not a DICOM file")
    return ds


def _ensure_transfer_syntax(ds) -> None:
    """Preamble-less files carry no transfer syntax; they are native (uncompressed) in the encoding
    pydicom read them with, which is what their pixel data needs."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if ds["PixelData"].is_undefined_length:
        raise DicomRefused("compressed pixel data but no transfer syntax in the file meta")
    meta = meta if meta is not None else FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )
    ds.file_meta = meta


def check_frame_policy(policy: str, option: str, training: bool = False) -> None:
    """A :class:`~src.errors.UserError` naming ``option`` unless ``policy`` is one it accepts; training
    takes one image per file, so ``all`` (one row per frame) is for ``src.predict`` only."""
    from src.errors import UserError

    allowed = FRAME_POLICIES[:-1] if training else FRAME_POLICIES
    if policy not in allowed:
        extra = " (all, one row per frame, is for src.predict)" if training and policy == "all" else ""
        raise UserError(
            f"{option}={policy!r} must be one of {', '.join(allowed)}{extra}: what to do with a multi-frame "
            "DICOM (refuse it, its first frame, its middle frame)."
        )


def _cut_short(ds, size: int) -> bool:
    """True when the file ends inside its last element or element header (pydicom stops reading there
    without a word): the last element's declared end lies past the file's end, or less than one element
    header (12 bytes) is left over after it; also when nothing follows the file meta."""
    from pydicom.dataelem import RawDataElement

    if not ds._dict:
        return True
    last = ds._dict[max(ds._dict)]
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
        return False
    end = last.value_tell + last.length
    return end > size or 0 < size - end < 12


def frame_indices(n_frames: int, policy: str, option: str) -> list[int]:
    """0-based frames to read of a file with ``n_frames`` under ``policy`` (see :data:`FRAME_POLICIES`)."""
    if n_frames <= 1:
        return [0]
    if policy == "first":
        return [0]
    if policy == "middle":
        return [n_frames // 2]
    if policy == "all":
        return list(range(n_frames))
    raise DicomRefused(f"has {n_frames} frames; choose which with {option}=first, middle or all")


def _frame_view(ds, index: int):
    """``ds`` with the rescale and VOI of frame ``index`` lifted from an enhanced object's functional
    groups (shared, then per-frame) to the top level, where pydicom's LUT functions look for them."""
    if "SharedFunctionalGroupsSequence" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        return ds
    from pydicom.dataset import Dataset

    view = Dataset()
    view.file_meta = getattr(ds, "file_meta", None)
    view.set_original_encoding(*ds.original_encoding)
    for elem in ds:
        if elem.tag.group == 0x0028:
            view.add(elem)
    groups = []
    for key in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(key)
        if seq:
            item = seq[0] if key.startswith("Shared") else seq[index] if index < len(seq) else None
            if item is not None:
                groups.append(item)
    for item in groups:
        for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if item.get(macro):
                for elem in item[macro][0]:
                    view.add(elem)
    return view


def _gray_to_unit(arr: np.ndarray, ds) -> np.ndarray:
    """Stored values of one grayscale frame to display values in 0..1 (see the module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    lut = ds.get("VOILUTSequence")
    has_lut = bool(lut) and "LUTData" in lut[0] and "LUTDescriptor" in lut[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut:
        # The VOI LUT's output range is fixed by its descriptor's bits per entry (PS3.3 C.11.2.1.1).
        # The LUT is indexed by integers: rescaled (float) values are rounded to the nearest entry.
        out = apply_voi_lut(
            np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values, ds, index=0
        )
        lo, hi = 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
    elif has_window:
        out = apply_voi_lut(values, ds, index=0)
        # The window's output range as pydicom defines it: the images of -inf and +inf.
        with np.errstate(over="ignore"):
            lo, hi = (float(v) for v in apply_voi_lut(np.array([-1e300, 1e300]), ds, index=0))
    else:
        out = values
        lo, hi = float(np.min(values)), float(np.max(values))
    unit = (np.asarray(out, dtype=np.float64) - lo) / (hi - lo) if hi != lo else np.zeros(arr.shape)
    unit = np.clip(unit, 0.0, 1.0)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def _color_to_unit(arr: np.ndarray, ds) -> np.ndarray:
    """One colour frame (RGB after pydicom's YBR conversion, or palette indices) as (H, W, 3) in 0..1."""
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        return rgb.astype(np.float64) / float(np.iinfo(rgb.dtype).max)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DicomRefused(f"photometric interpretation {photometric or 'missing'} is not supported")
    bits = int(ds.get("BitsStored", 8) or 8)
    return np.clip(arr.astype(np.float64) / (2**bits - 1), 0.0, 1.0)


def decode_frames(
    path: Path, policy: str = "error", option: str = "dataset.dicom_frames"
) -> list[np.ndarray]:
    """The frames of ``path`` that ``policy`` selects, each as display values in 0..1: (H, W) grayscale or
    (H, W, 3) RGB. Raises :class:`DicomRefused` with the reason when there is no image to give."""
    from pydicom.pixels import pixel_array
    from pydicom.pixels.utils import get_expected_length, get_nr_frames

    ds = _read(path)
    if str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) == MEDIA_DIRECTORY_UID:
        raise DicomRefused("a DICOMDIR (the index of a DICOM media folder), no image")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        size = Path(path).stat().st_size
        if _cut_short(ds, size):
            raise DicomRefused(f"truncated: the file ends after {size} bytes, inside an element")
        raise DicomRefused(f"no pixel data ({object_kind(ds)})")
    try:
        _ensure_transfer_syntax(ds)
        n_frames = int(get_nr_frames(ds, warn=False))
        syntax = ds.file_meta.TransferSyntaxUID
        have, want = len(ds.get("PixelData") or b""), get_expected_length(ds)
    except DicomRefused:
        raise
    except Exception as err:  # missing / invalid Image Pixel module elements
        missing = _MISSING.search(str(err))
        detail = f"no {missing[1]} element" if missing else str(err).splitlines()[0]
        raise DicomRefused(f"damaged image description: {detail}") from None
    if not syntax.is_compressed and "PixelData" in ds and have < want:
        raise DicomRefused(f"truncated: {have} of {want} bytes of pixel data")
    frames = frame_indices(n_frames, policy, option)
    out = []
    for index in frames:
        try:
            arr = pixel_array(ds, index=index if n_frames > 1 else None)
        except NotImplementedError:
            raise DicomRefused(
                f"no decoder for its transfer syntax {syntax.name}; install the project's dependencies "
                "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"
            ) from None
        except Exception as err:  # decoders raise many types on corrupt streams
            message = str(err)
            short = _SHORT_PIXELS.search(message)
            if short:
                raise DicomRefused(f"truncated: {short[1]} of {short[2]} bytes of pixel data") from None
            detail = " ".join(message.split())[:200]
            raise DicomRefused(f"cannot decode its {syntax.name} pixel data ({detail})") from None
        view = _frame_view(ds, index)
        try:
            gray = arr.ndim == 2 and ds.get("PhotometricInterpretation") != "PALETTE COLOR"
            out.append(_gray_to_unit(arr, view) if gray else _color_to_unit(arr, view))
        except DicomRefused:
            raise
        except Exception as err:  # pydicom's LUT functions raise on invalid LUT / window elements
            raise DicomRefused(f"invalid LUT or window: {' '.join(str(err).split())[:200]}") from None
    return out
