"""Image decoding (PIL for PNG / JPEG / TIFF, pydicom for DICOM found by content) and a dataset that
decodes on access."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from src.data.dicom import DICOM_SUFFIXES, DICOMDIR_NAME, DicomRefused, decode_frames, is_dicom, is_dicomdir
from src.data.transforms import DEFAULT_DECODE, Decode, read_dicom_max255, resize_to
from src.errors import UserError

# Files taken by suffix; any other file is taken when it holds DICOM (see :func:`image_files`).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *DICOM_SUFFIXES)
# dataset.color: how pixels are kept. ``gray`` (radiographs): (H, W) uint8, repeated to three channels by
# Normalize; ``rgb`` (stained cells, photographs): (H, W, 3) uint8.
COLORS = ("gray", "rgb")


def image_files(folder: Path) -> list[Path]:
    """Every image under ``folder``, recursively, sorted: files with an image suffix, and files of any
    other name that hold DICOM by content (PACS and CD exports have no suffix); hidden files and
    ``DICOMDIR`` (a CD's index, no image) left out."""
    found = []
    for p in sorted(Path(folder).rglob("*")):
        if p.name.startswith(".") or not p.is_file() or p.name.upper() == DICOMDIR_NAME:
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES or (is_dicom(p) and not is_dicomdir(p)):
            found.append(p)
    return found


_MESSAGE = re.compile(r"cannot read image (.*?): (.*)\. Replace or remove the file\.$", re.S)


class UnreadableImage(UserError):
    """A file that gives no image: ``path`` and a short ``reason`` (for predict's errors CSV and the
    training's skipped-images list); the message names both and the fix."""

    def __init__(self, path: Path | str, reason: str | None = None) -> None:
        if reason is None:
            # Rebuilt from one string (unpickled, or re-raised from a DataLoader worker with its traceback).
            marker = f"{UnreadableImage.__module__}.{UnreadableImage.__qualname__}: "
            message = str(path).rsplit(marker, 1)[-1].strip()
            parts = _MESSAGE.match(message)
            path, reason = (parts[1], parts[2]) if parts else ("", message)
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot read image {path}: {reason}. Replace or remove the file.")


def read_image(
    path: Path, size: int, color: str = "gray", frames: str = "error", decode: Decode = DEFAULT_DECODE
) -> Tensor:
    """Any supported file (PNG / JPEG / TIFF / BMP or DICOM, the latter found by content whatever its
    name) as a (size, size) uint8 grayscale tensor, or (size, size, 3) uint8 RGB with ``color="rgb"``
    (a DICOM's grayscale repeated into the three channels). ``frames`` picks the frame of a multi-frame
    DICOM (``error``, ``first``, ``middle``; see :mod:`src.data.dicom`); ``decode`` the papers' resize and
    DICOM intensity rules (:mod:`src.data.transforms`)."""
    images = read_frames(path, size, color, frames, decode=decode)
    if len(images) != 1:
        raise UnreadableImage(path, f"has {len(images)} frames; training takes one: use first or middle")
    return images[0]


def read_frames(
    path: Path,
    size: int,
    color: str = "gray",
    frames: str = "error",
    option: str = "dataset.dicom_frames",
    decode: Decode = DEFAULT_DECODE,
) -> list[Tensor]:
    """:func:`read_image` for every frame ``frames`` selects (``all``: each frame of a multi-frame DICOM);
    one image for any other file. ``option`` is the config key named when a multi-frame file is refused."""
    if color not in COLORS:
        raise UserError(f"colour mode {color!r} is unknown: use gray or rgb (dataset.color).")
    try:
        empty = Path(path).stat().st_size == 0
    except OSError as err:
        raise UnreadableImage(path, err.strerror or str(err)) from None
    if empty:
        raise UnreadableImage(path, "empty file")
    if Path(path).suffix.lower() in DICOM_SUFFIXES or is_dicom(path):
        if decode.dicom_intensity == "max255":
            return [read_dicom_max255(path, size, color, decode.resize)]
        if decode.resize != "pil":
            raise UserError(f"{path}: dataset.resize={decode.resize} applies to PNG / JPEG files, not DICOM.")
        return read_dicom_frames(path, size, color, frames, option)
    return [read_pil(path, size, "RGB" if color == "rgb" else "L", decode.resize)]


def read_dicom(path: Path, size: int, color: str = "gray", frames: str = "error") -> Tensor:
    """One DICOM image (see :func:`read_dicom_frames`)."""
    return read_dicom_frames(path, size, color, frames)[0]


def read_dicom_frames(
    path: Path, size: int, color: str = "gray", frames: str = "error", option: str = "dataset.dicom_frames"
) -> list[Tensor]:
    """The selected frames of a DICOM as display images (modality LUT, first VOI, MONOCHROME1 inverted,
    palette applied; see :mod:`src.data.dicom`), resized to size x size; a grayscale DICOM read as
    ``rgb`` is repeated into three channels, a colour one read as ``gray`` converted with ITU-R 601 luma."""
    try:
        units = decode_frames(path, frames, option)
    except DicomRefused as err:
        raise UnreadableImage(path, err.reason) from None
    out = []
    for unit in units:
        pixels = np.rint(unit * 255.0).astype(np.uint8)
        im = Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L")
        im = im.convert("RGB" if color == "rgb" else "L").resize((size, size), Image.Resampling.BILINEAR)
        out.append(torch.from_numpy(np.array(im, dtype=np.uint8)))
    return out


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
        reason = str(err).replace(f"{path!r}", "").replace(str(path), "").strip(" :'")
        raise UnreadableImage(path, reason or type(err).__name__) from None


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
        frames: str = "error",
        decode: Decode = DEFAULT_DECODE,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths, self.targets, self.size, self.transform = list(paths), targets, size, transform
        self.hflip, self.load_size, self.color = hflip, load_size or size, color
        self.frames = frames
        self.decode = decode

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, index: int) -> Tensor:
        """The (load_size, load_size[, 3]) uint8 image before augmentation."""
        return read_image(self.paths[index], self.load_size, self.color, self.frames, self.decode)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.pixels(index)
        if self.load_size > self.size:
            image = random_crop(image, self.size)
        image = self.transform(image)
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.targets[index]
