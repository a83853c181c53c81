"""Whole decoded images through a paper's own transform (``dataset.protocol``, see src.data.transforms).

The default pipeline squashes every image to a square once (cacheable); MED-PEFT's protocols need the image
at its own size and aspect (resize of the shorter side, RandomResizedCrop), so these datasets decode each file
on access, at full size, into an RGB PIL image (MED-PEFT repeats grayscale into three channels) and hand it
to the transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from src.data.image_files import DICOM_SUFFIXES, read_dicom
from src.data.transforms import DEFAULT_DECODE, Decode, dicom_max255
from src.errors import UserError


def open_whole(path: Path, color: str, decode: Decode) -> Image.Image:
    """``path`` at its own size as an RGB PIL image (grayscale repeated; ``color`` rgb keeps colours)."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        import pydicom

        try:
            ds = pydicom.dcmread(str(path))
            pixels = ds.pixel_array
        except Exception as err:  # pydicom raises many types for missing / undecodable pixel data
            raise UserError(f"cannot read DICOM pixels of {path}: {err}") from None
        if decode.dicom_intensity == "max255" and pixels.ndim == 2:
            return Image.fromarray(
                dicom_max255(pixels, str(ds.get("PhotometricInterpretation", "")))
            ).convert("RGB")
        rows, cols = int(ds.Rows), int(ds.Columns)
        if rows != cols:  # the window decoder returns squares; resizing a non-square one would distort it
            raise UserError(
                f"{path}: dataset.protocol keeps the image's aspect, but this {rows}x{cols} DICOM decodes only "
                "to a square with dataset.dicom_intensity=window; use dataset.dicom_intensity=max255."
            )
        return Image.fromarray(read_dicom(path, rows, "rgb").numpy())
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):  # as src.data.image_files.read_pil: own min..max to 8 bits
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                im = Image.fromarray(np.rint(arr).astype(np.uint8))
            return im.convert("RGB") if color == "rgb" else im.convert("L").convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path}: {err}. Replace or remove the file.") from None


class ProtocolImageDataset(Dataset):
    """``(transform(image), target)`` for each file, decoded on access by :func:`open_whole`."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Tensor,
        transform: Callable[[Image.Image], Tensor],
        color: str = "gray",
        decode: Decode = DEFAULT_DECODE,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths, self.targets, self.transform = list(paths), targets, transform
        self.color, self.decode = color, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(open_whole(self.paths[index], self.color, self.decode)), self.targets[index]


def predict_inputs(
    files: Sequence[Path], meta: dict[str, str], size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[int, int], Tensor]:
    """For src.predict, an adapter trained with a paper's protocol (``meta["protocol"]``): images
    ``start:stop`` of ``files`` through that protocol's evaluation transform (colour mode and decoding rules
    from ``meta``), decoded once. The default pipeline (squash) is src.predict_inputs' decoded squares."""
    import torch

    from src.data.transforms import protocol_transform

    color, decode = meta.get("color", "gray"), Decode.from_metadata(meta)
    transform = protocol_transform(meta.get("protocol", "squash"), "test", size, mean, std)
    if transform is None:
        raise ValueError("predict_inputs is for protocol adapters; squares come from decode_inputs")
    ready = torch.stack([transform(open_whole(p, color, decode)) for p in files])
    return lambda start, stop: ready[start:stop]


def decoding_metadata(datamodule: object) -> dict[str, str]:
    """What src.predict needs to decode like this datamodule (none for datasets without files)."""
    decode = getattr(datamodule, "decode", None)
    if not isinstance(decode, Decode):
        return {}
    return {**decode.metadata(), "protocol": str(getattr(datamodule, "protocol", "squash"))}
