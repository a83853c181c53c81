"""Image decoding (PIL for PNG / JPEG / TIFF, pydicom for DICOM) and a dataset that decodes on access."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from src.data.transforms import DEFAULT_DECODE, Decode, read_dicom_max255, resize_to
from src.errors import UserError

DICOM_SUFFIXES = (".dcm", ".dicom")
# dataset.color: how pixels are kept. ``gray`` (radiographs): (H, W) uint8, repeated to three channels by
# Normalize; ``rgb`` (stained cells, photographs): (H, W, 3) uint8.
COLORS = ("gray", "rgb")


def read_image(path: Path, size: int, color: str = "gray", decode: Decode = DEFAULT_DECODE) -> Tensor:
    """Any supported file (PNG / JPEG / TIFF / BMP or DICOM) as a (size, size) uint8 grayscale tensor, or
    (size, size, 3) uint8 RGB with ``color="rgb"`` (a DICOM's grayscale repeated into the three channels).
    ``decode``: the papers' resize and DICOM intensity rules (src.data.transforms)."""
    if color not in COLORS:
        raise UserError(f"colour mode {color!r} is unknown: use gray or rgb (dataset.color).")
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        if decode.dicom_intensity == "max255":
            return read_dicom_max255(path, size, color, decode.resize)
        if decode.resize != "pil":
            raise UserError(f"{path}: dataset.resize={decode.resize} applies to PNG / JPEG files, not DICOM.")
        return read_dicom(path, size, color)
    return read_pil(path, size, "RGB" if color == "rgb" else "L", decode.resize)


def read_dicom(path: Path, size: int, color: str = "gray") -> Tensor:
    """DICOM to display grayscale: rescale slope/intercept, the file's window (else its range),
    MONOCHROME1 inverted so that dense tissue is bright as in MONOCHROME2; with ``color="rgb"`` that
    grayscale repeated into three channels. A colour DICOM (3 samples per pixel, e.g. slides or
    endoscopy; pydicom converts YBR to RGB) is scaled by its bit depth and converted to ``color``."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array.astype(np.float32)
    except Exception as err:  # pydicom raises many types for missing / undecodable pixel data
        raise UserError(f"cannot read DICOM pixels of {path}: {err}") from None
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        arr *= 255.0 / (2 ** int(getattr(ds, "BitsStored", 8)) - 1)
        im = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8), "RGB")
        im = im.convert("RGB" if color == "rgb" else "L").resize((size, size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(im, dtype=np.uint8))
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
    gray = torch.from_numpy(np.array(im, dtype=np.uint8))
    return gray.unsqueeze(-1).expand(-1, -1, 3).contiguous() if color == "rgb" else gray


def read_grayscale(path: Path, size: int) -> Tensor:
    """Decode, convert to 8-bit grayscale and resize to size x size (see :func:`read_pil`)."""
    return read_pil(path, size, "L")


def read_pil(path: Path, size: int, mode: str, resize: str = "pil") -> Tensor:
    """Decode with PIL into ``mode`` (``L`` or ``RGB``) at size x size.

    16-bit and 32-bit grayscale is scaled from its own min..max to 0..255 (a constant image becomes 0), rounded;
    palette, RGBA / LA (alpha dropped, as PIL converts), CMYK and grayscale sources go through PIL's
    conversion (ITU-R 601 luma for ``L``; three equal channels for a gray source read as ``RGB``); truncated
    or unreadable files raise a :class:`UserError` naming the file.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                im = Image.fromarray(np.rint(arr).astype(np.uint8))
            im = resize_to(im.convert(mode), size, resize)
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
    horizontal flip; ``color`` (gray / rgb) is the decoding mode of :func:`read_image`."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Tensor,
        size: int,
        transform: Callable[[Tensor], Tensor],
        hflip: bool,
        load_size: int | None = None,
        color: str = "gray",
        decode: Decode = DEFAULT_DECODE,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths, self.targets, self.size, self.transform = list(paths), targets, size, transform
        self.hflip, self.load_size, self.color = hflip, load_size or size, color
        self.decode = decode

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, index: int) -> Tensor:
        """The (load_size, load_size[, 3]) uint8 image before augmentation."""
        return read_image(self.paths[index], self.load_size, self.color, self.decode)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.pixels(index)
        if self.load_size > self.size:
            image = random_crop(image, self.size)
        image = self.transform(image)
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.targets[index]
