"""Image decoding (PIL for PNG / JPEG / TIFF, pydicom for DICOM) and a dataset that decodes on access."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from src.errors import UserError

DICOM_SUFFIXES = (".dcm", ".dicom")


def read_image(path: Path, size: int) -> Tensor:
    """Any supported file (PNG / JPEG / TIFF / BMP or DICOM) as a (size, size) uint8 grayscale tensor."""
    return (
        read_dicom(path, size) if Path(path).suffix.lower() in DICOM_SUFFIXES else read_grayscale(path, size)
    )


def read_dicom(path: Path, size: int) -> Tensor:
    """DICOM to display grayscale: rescale slope/intercept, the file's window (else its range),
    MONOCHROME1 inverted so that dense tissue is bright as in MONOCHROME2."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array.astype(np.float32)
    except Exception as err:  # pydicom raises many types for missing / undecodable pixel data
        raise UserError(f"cannot read DICOM pixels of {path}: {err}") from None
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is not None and width is not None:
        center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        lo, hi = center - width / 2, center + width / 2
    else:
        lo, hi = float(arr.min()), float(arr.max())
    arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = 1.0 - arr
    im = Image.fromarray((arr * 255).round().astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(im, dtype=np.uint8))


def read_grayscale(path: Path, size: int) -> Tensor:
    """Decode, convert to 8-bit grayscale and resize to size x size.

    16-bit and 32-bit grayscale is scaled from its own min..max to 0..255 (a constant image becomes 0); RGB,
    RGBA and palette images become ITU-R 601 luma (alpha is ignored); truncated or unreadable files raise a
    :class:`UserError` naming the file.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                im = Image.fromarray(np.rint(arr).astype(np.uint8))
            im = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.array(im, dtype=np.uint8))
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path}: {err}. Replace or remove the file.") from None


class ImageFileDataset(Dataset):
    def __init__(
        self,
        paths: Sequence[Path],
        targets: Tensor,
        size: int,
        transform: Callable[[Tensor], Tensor],
        hflip: bool,
    ) -> None:
        self.paths, self.targets, self.size, self.transform, self.hflip = (
            list(paths),
            targets,
            size,
            transform,
            hflip,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.transform(read_image(self.paths[index], self.size))
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.targets[index]
