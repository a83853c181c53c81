"""Preprocessing rules of the papers' own code, as dataset options.

Decoding (:class:`Decode`, applied where every file is decoded, so the cache and ``src.predict`` follow it):

* ``resize``: ``pil`` (default) resizes the 8-bit image with PIL's bilinear filter, which widens its kernel
  when shrinking (antialiased). ``tensor`` is MeLo's rule for its 224 px datasets (LoRA-ViT
  ``utils/dataloader_cxr_cn.py``, ``dataloader_blood_cell.py``): the image as a float tensor through
  torchvision ``Resize``, which with MeLo's torch 1.13 / torchvision 0.14 did **not** antialias tensors
  (bilinear from the 4 nearest pixels). On a 3000 px radiograph the two differ by 0.086 on average and up to
  0.85 in normalised units; torchvision with ``antialias=True`` differs from PIL by 0.004 (rounding), so
  ``tensor`` is only needed to match MeLo (measurement in docs/reproduction.md). The result is rounded
  to 8 bits like every decoded image (0.004 mean, 0.009 max in normalised units from MeLo's float pipeline).
* ``dicom_intensity``: ``window`` (default, src.data.image_files) or ``max255``, MED-PEFT's rule for RSNA
  (``datasets.py``): ``x * 255 / max`` of the stored pixel values, inverted for MONOCHROME1.

Transforms on whole decoded images (:func:`protocol_transform`): MED-PEFT's evaluation resize of the shorter
side (bicubic) then centre crop, and its two training augmentations: RandomResizedCrop (bicubic) + horizontal
flip (MRM's SGD path) and timm ``create_transform`` with RandAugment ``rand-m9-mstd0.5-inc1`` and random
erasing 0.25 (CXR-MAE's AdamW path, as MAE's fine-tuning). Randomness comes from torch / python ``random``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from src.errors import UserError

RESIZES = ("pil", "tensor")
DICOM_INTENSITIES = ("window", "max255")


@dataclass(frozen=True)
class Decode:
    """How a file becomes the 8-bit image every later step sees (see the module docstring)."""

    resize: str = "pil"
    dicom_intensity: str = "window"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise UserError(
                f"dataset.resize={self.resize!r} must be pil (PIL bilinear on 8-bit) or tensor (MeLo's "
                "torchvision resize of float tensors, no antialiasing)."
            )
        if self.dicom_intensity not in DICOM_INTENSITIES:
            raise UserError(
                f"dataset.dicom_intensity={self.dicom_intensity!r} must be window (the file's VOI window, "
                "else its range) or max255 (MED-PEFT: pixel * 255 / max)."
            )

    def key(self) -> str:
        """Part of a cache entry's name; empty for the defaults so existing entries stay valid."""
        return "" if self == Decode("pil", "window") else f"_{self.resize}_{self.dicom_intensity}"

    def metadata(self) -> dict[str, str]:
        """Recorded in an adapter so that src.predict decodes as training did."""
        return {"resize": self.resize, "dicom_intensity": self.dicom_intensity}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> Decode:
        return cls(meta.get("resize", "pil"), meta.get("dicom_intensity", "window"))


DEFAULT_DECODE = Decode()


def resize_to(image: Image.Image, size: int, rule: str = "pil") -> Image.Image:
    """``image`` (mode L or RGB) at ``size`` x ``size`` by ``rule`` (pil | tensor), still 8-bit."""
    if rule == "pil":
        return image.resize((size, size), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    # torchvision 0.14 Resize on a tensor = interpolate(bilinear, align_corners=False, antialias=False)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy())


def dicom_max255(pixels: np.ndarray, photometric: str) -> np.ndarray:
    """MED-PEFT's DICOM intensity rule (RSNA, ``datasets.py``): stored values * 255 / max, 8-bit, with
    MONOCHROME1 inverted so that dense tissue is bright."""
    arr = pixels.astype(np.float32)
    top = float(arr.max())
    arr = arr * (255.0 / top) if top > 0 else np.zeros_like(arr)
    arr = np.clip(arr, 0, 255).astype(np.uint8)  # their np.uint8 cast truncates
    return 255 - arr if photometric == "MONOCHROME1" else arr


def read_dicom_max255(path: Path, size: int, color: str, rule: str = "pil") -> Tensor:
    """A DICOM decoded by :func:`dicom_max255`, resized by ``rule``, as (H, W) or (H, W, 3) uint8."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for missing / undecodable pixel data
        raise UserError(f"cannot read DICOM pixels of {path}: {err}") from None
    if pixels.ndim != 2:
        raise UserError(
            f"{path}: dataset.dicom_intensity=max255 (MED-PEFT's rule) reads single-frame grayscale DICOMs; "
            "this file has pixel shape {tuple(pixels.shape)}. Use dataset.dicom_intensity=window."
        )
    gray = resize_to(
        Image.fromarray(dicom_max255(pixels, str(ds.get("PhotometricInterpretation", "")))), size, rule
    )
    out = torch.from_numpy(np.array(gray, dtype=np.uint8))
    return out.unsqueeze(-1).expand(-1, -1, 3).contiguous() if color == "rgb" else out


# ----------------------------------------------------------------------------------- MED-PEFT transforms
PROTOCOLS = ("squash", "medpeft_mrm", "medpeft_cxr_mae")


def eval_transform(resize: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """MED-PEFT / MAE evaluation: shorter side to ``resize`` (bicubic), centre ``crop``, normalise."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


def mrm_train_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """MED-PEFT's MRM (SGD) training augmentation: RandomResizedCrop (bicubic) + horizontal flip."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


def cxr_mae_train_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """MED-PEFT's CXR-MAE (AdamW) training augmentation, MAE fine-tuning's: timm ``create_transform`` with
    RandAugment ``rand-m9-mstd0.5-inc1``, bicubic, random erasing 0.25 (pixel mode, one erase)."""
    from timm.data import create_transform

    return create_transform(
        input_size=size,
        is_training=True,
        color_jitter=None,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
        mean=tuple(mean),
        std=tuple(std),
    )


def protocol_transform(
    protocol: str, split: str, size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable | None:
    """The PIL -> normalised tensor transform of ``protocol`` for ``split``; None for ``squash`` (ours:
    the whole image resized to a square, random crop margin + flip in training)."""
    if protocol not in PROTOCOLS:
        raise UserError(f"dataset.protocol={protocol!r} must be one of {', '.join(PROTOCOLS)}.")
    if protocol == "squash":
        return None
    if split != "train":  # MRM: shorter side 224 -> crop 224; CXR-MAE: 256 -> 224 (size * 256 / 224)
        return eval_transform(size if protocol == "medpeft_mrm" else round(size * 256 / 224), size, mean, std)
    if protocol == "medpeft_mrm":
        return mrm_train_transform(size, mean, std)
    return cxr_mae_train_transform(size, mean, std)
