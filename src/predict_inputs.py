"""``src.predict``'s inputs: which files to read, their pixels, and the files refused with the reason.

A folder is searched recursively for images (by suffix) and DICOMs (by content: PACS / CD exports carry no
suffix; ``DICOMDIR`` is skipped). Each file is decoded on its own, so a bad file costs its own row only:
with ``on_bad_image=skip`` (predict's default) it is listed in ``<out>.errors.csv`` (file, reason) and
the run exits non-zero after writing the predictions of every readable file; ``on_bad_image=error``
stops at the first. A multi-frame DICOM with ``dicom_frames=all`` gives one row per frame, named
``<file>#<frame>`` (frames numbered from 1 as in DICOM).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from src.atomic import atomic_write
from src.data.dicom import check_frame_policy
from src.data.image_files import IMAGE_SUFFIXES, UnreadableImage, image_files, read_frames
from src.data.transforms import DEFAULT_DECODE, Decode
from src.errors import UserError

BAD_IMAGE_POLICIES = ("skip", "error")
# How an adapter decodes: its colour mode, or (colour mode, the papers' decoding rules).
Mode = str | tuple[str, Decode]


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given, folders searched recursively (see :func:`~src.data.image_files.image_files`);
    sorted per folder, no duplicates."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += image_files(path)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"inputs: {path} does not exist.")
    if not found:
        raise UserError(
            f"inputs={list(inputs)} holds no images ({', '.join(IMAGE_SUFFIXES)}, or DICOM files of any name)."
        )
    return list(dict.fromkeys(found))


@dataclass
class DecodedInputs:
    """``rows`` names each image (the file, or ``<file>#<frame>`` as a Path, so that callers keep one
    type); ``pixels[color]`` is the
    (len(rows), size, size[, 3]) uint8 stack in that colour mode; ``refused`` is (file, reason)."""

    rows: list[Path] = field(default_factory=list)
    pixels: dict[Mode, torch.Tensor] = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)


def check_options(on_bad_image: str, dicom_frames: str) -> None:
    """predict's ``on_bad_image`` and ``dicom_frames``, checked before the model is built."""
    check_bad_image_policy(on_bad_image)
    check_frame_policy(dicom_frames, "dicom_frames")


def check_bad_image_policy(policy: str) -> None:
    """A :class:`UserError` naming ``on_bad_image`` unless it is skip or error."""
    if policy not in BAD_IMAGE_POLICIES:
        raise UserError(
            f"on_bad_image={policy!r} must be skip (predict every readable file, list the others in "
            "<out>.errors.csv, exit 1) or error (stop at the first unreadable file)."
        )


def decode_inputs(
    files: Sequence[Path],
    size: int,
    modes: Iterable[Mode],
    frames: str = "error",
    on_bad_image: str = "skip",
) -> DecodedInputs:
    """Decode every file in every mode of ``modes`` (a colour mode, or (colour mode, decoding rules));
    see the module docstring for the policies."""
    check_frame_policy(frames, "dicom_frames")
    check_bad_image_policy(on_bad_image)
    modes = list(dict.fromkeys(modes))
    out = DecodedInputs()
    stacks: dict[Mode, list[torch.Tensor]] = {c: [] for c in modes}
    for file in files:
        try:
            images = {c: _read(file, size, c, frames) for c in modes}
        except UnreadableImage as err:
            if on_bad_image == "error":
                raise UserError(f"{err} (or set on_bad_image=skip to predict the other files)") from None
            out.refused.append((str(file), err.reason))
            continue
        count = len(next(iter(images.values())))
        out.rows += [file] if count == 1 else [Path(f"{file}#{k + 1}") for k in range(count)]
        for c in modes:
            stacks[c] += images[c]
    for c in modes:
        color = c if isinstance(c, str) else c[0]
        shape = (0, size, size, 3) if color == "rgb" else (0, size, size)
        out.pixels[c] = torch.stack(stacks[c]) if stacks[c] else torch.empty(shape, dtype=torch.uint8)
    return out


def _read(file: Path, size: int, mode: Mode, frames: str) -> list[torch.Tensor]:
    color, decode = (mode, DEFAULT_DECODE) if isinstance(mode, str) else mode
    return read_frames(file, size, color, frames, option="dicom_frames", decode=decode)


def errors_path(out: Path) -> Path:
    """``<out>.errors.csv`` next to the predictions."""
    return Path(f"{out}.errors.csv")


def write_errors(out: Path, refused: Sequence[tuple[str, str]]) -> Path | None:
    """Write the refused files (file, reason) next to ``out``; remove a stale list when none was refused."""
    path = errors_path(out)
    if not refused:
        path.unlink(missing_ok=True)
        return None
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason"])
        writer.writerows(refused)
    return path
