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
    """Decode, convert to 8-bit grayscale (16-bit scaled by its range) and resize to size x size."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                im = Image.fromarray(arr.astype(np.uint8))
            im = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.array(im, dtype=np.uint8))
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path}: {err}. Replace or remove the file.") from None


def random_crop(image: Tensor, size: int) -> Tensor:
    """A uniformly placed ``size`` x ``size`` window of an (H, W[, 3]) image."""
    top = int(torch.randint(image.shape[0] - size + 1, ()))
    left = int(torch.randint(image.shape[1] - size + 1, ()))
    return image[top : top + size, left : left + size]


class ImageFileDataset(Dataset):
    """Decodes each image on access at ``load_size`` (default ``size``). A ``load_size`` above ``size``
    (the training split, see ``dataset.crop_margin``) adds a random ``size`` crop; ``hflip`` a random
    horizontal flip."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Tensor,
        size: int,
        transform: Callable[[Tensor], Tensor],
        hflip: bool,
        load_size: int | None = None,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths, self.targets, self.size, self.transform = list(paths), targets, size, transform
        self.hflip, self.load_size = hflip, load_size or size

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, index: int) -> Tensor:
        """The (load_size, load_size) uint8 image before augmentation."""
        return read_image(self.paths[index], self.load_size)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.pixels(index)
        if self.load_size > self.size:
            image = random_crop(image, self.size)
        image = self.transform(image)
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.targets[index]
