"""The preprocessed image cache: every image of a split decoded and resized once, kept as one uint8
array in a memory-mappable ``.npy`` file, so large radiographs are not decoded every epoch.

An entry is a folder ``<cache_dir>/<dataset>/<split>_<size>px_<color>_<files>_<stamp>/`` holding
``images.npy`` ((N, size, size) for ``gray``, (N, size, size, 3) for ``rgb``) and ``meta.json``: ``<files>`` hashes the ordered list of source paths, ``<stamp>`` their
sizes and modification times. A changed source file gives a new stamp, so the entry is rebuilt and the
stale one removed. Nothing is written next to the sources.

One build per entry, whatever the number of processes: every DDP rank and every job of a sweep takes the
entry's lock file (``<cache_dir>/.locks/<dataset>/<name>.lock``) before looking for it; the first builds it (in a temp folder
renamed into place), the others wait and then map it. A process keeps a shared lock on each entry it maps
for as long as it runs, and a stale entry is removed only if nobody holds one (an entry in use by another
job is left for a later run to remove). Locks are ``fcntl.flock`` locks: shared and exclusive, released by
the kernel when a process dies (the ``filelock`` package has exclusive locks only).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from src.atomic import atomic_directory
from src.data.image_files import ImageFileDataset, read_image
from src.data.transforms import DEFAULT_DECODE, Decode
from src.errors import UserError

log = logging.getLogger(__name__)

# Part of every key: bump it when decoding or resizing changes, so old entries are not reused.
CACHE_VERSION = 2  # 2: DICOM through pydicom's modality + VOI LUTs, frame policy in the key


class DecodeJobs(Dataset):
    """Decoding as a dataset, so that a DataLoader spreads it over worker processes: each item is
    ``(index, pixels or None, error message)``; a bad file is reported, never raised in a worker."""

    def __init__(
        self,
        paths: Sequence[Path],
        size: int,
        color: str = "gray",
        frames: str = "error",
        decode: Decode = DEFAULT_DECODE,
    ) -> None:
        self.paths, self.size, self.color, self.frames, self.decode = list(paths), size, color, frames, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str]:
        try:
            return index, read_image(self.paths[index], self.size, self.color, self.frames, self.decode), ""
        except UserError as err:
            return index, None, str(err)


def decode_all(
    paths: Sequence[Path],
    size: int,
    num_workers: int,
    desc: str,
    skip_bad: bool,
    sink: Callable[[int, Tensor], None] | None = None,
    color: str = "gray",
    frames: str = "error",
    decode: Decode = DEFAULT_DECODE,
) -> list[tuple[int, str]]:
    """Decode every file with ``num_workers`` processes, handing each image to ``sink``; returns the
    (index, message) of unreadable files, or raises on the first one unless ``skip_bad``."""
    loader = DataLoader(
        DecodeJobs(paths, size, color, frames, decode),
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=8 if num_workers else None,
    )
    bad: list[tuple[int, str]] = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=None, mininterval=1.0) as bar:
        for index, pixels, error in loader:
            if error:
                if not skip_bad:
                    raise UserError(f"{error} (or set dataset.on_bad_image=skip to leave such files out)")
                bad.append((int(index), error))
            elif sink is not None:
                sink(int(index), pixels)
            bar.update()
    return bad


def _digest(lines: Sequence[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def entry_name(
    paths: Sequence[Path],
    split: str,
    size: int,
    color: str = "gray",
    frames: str = "error",
    decode: Decode = DEFAULT_DECODE,
) -> tuple[str, str]:
    """(prefix shared by every version of this file list, full name with the sources' stamp)."""
    names = [str(Path(p).resolve()) for p in paths]
    try:
        stats = [os.stat(p) for p in names]
    except FileNotFoundError as err:
        raise UserError(f"image {err.filename} disappeared while building the cache; re-run.") from None
    stamp = _digest([f"v{CACHE_VERSION}", *(f"{s.st_size} {s.st_mtime_ns}" for s in stats)])
    prefix = f"{split}_{size}px_{color}{decode.key()}_{_digest(names)}" + (
        "" if frames == "error" else f"_{frames}"
    )
    return prefix, f"{prefix}_{stamp}"


@dataclass
class CacheEntry:
    """A complete entry: the ``.npy`` file and the rows (indices into the source list) that decoded."""

    images: Path
    bad: list[tuple[int, str]]
    built: bool


# Lock files of the entries this process maps, held open (shared) until it exits.
_IN_USE: dict[Path, int] = {}


def _lock_path(folder: Path, name: str) -> Path:
    """Lock files live in ``<cache_dir>/.locks/<dataset>/`` so that a dataset's folder holds its entries only."""
    return folder.parent / ".locks" / folder.name / f"{name}.lock"


def _lock(path: Path, mode: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_stale(folder: Path, prefix: str, keep: str) -> None:
    for stale in folder.glob(f"{prefix}_*"):
        if stale.name == keep or not stale.is_dir():
            continue
        if (own := _IN_USE.pop(_lock_path(folder, stale.name), None)) is not None:
            os.close(own)  # this process moved on to the new version (its old maps stay readable)
        try:
            fd = _lock(_lock_path(folder, stale.name), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("cache entry %s is in use by another job; left in place", stale)
            continue
        try:
            shutil.rmtree(stale, ignore_errors=True)
        finally:
            os.close(fd)


def build_or_load(
    paths: Sequence[Path],
    size: int,
    cache_dir: Path,
    dataset: str,
    split: str,
    num_workers: int,
    skip_bad: bool,
    color: str = "gray",
    frames: str = "error",
    decode: Decode = DEFAULT_DECODE,
) -> CacheEntry:
    """The cache entry of ``paths`` at ``size`` in ``color`` mode: reused when current, else built once
    across processes (stale versions removed when unused). The entry stays locked (shared) while this
    process lives, so no other job removes it."""
    folder = Path(cache_dir).expanduser() / dataset
    folder.mkdir(parents=True, exist_ok=True)
    prefix, name = entry_name(paths, split, size, color, frames, decode)
    final, lock = folder / name, _lock_path(folder, name)
    built = False
    if lock not in _IN_USE:
        try:
            fd = _lock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the usual case: built before, only map it
        except BlockingIOError:
            log.info("waiting for another process building %s", final)
            fd = _lock(lock, fcntl.LOCK_SH)
        if not (final / "meta.json").exists():
            fcntl.flock(fd, fcntl.LOCK_EX)  # one builder; whoever gets it second finds the entry built
            if not (final / "meta.json").exists():
                desc = f"caching {dataset}/{split} at {size}px {color}"
                _build(paths, size, final, num_workers, skip_bad, desc, color, frames, decode)
                built = True
            fcntl.flock(fd, fcntl.LOCK_SH)
        _IN_USE[lock] = fd
        _remove_stale(folder, prefix, name)
    meta = json.loads((final / "meta.json").read_text())
    bad = [(int(i), str(msg)) for i, msg in meta["bad"]]
    if bad and not skip_bad:
        raise UserError(f"{bad[0][1]} (or set dataset.on_bad_image=skip to leave such files out)")
    return CacheEntry(final / "images.npy", bad, built)


def _build(
    paths: Sequence[Path],
    size: int,
    final: Path,
    num_workers: int,
    skip_bad: bool,
    desc: str,
    color: str = "gray",
    frames: str = "error",
    decode: Decode = DEFAULT_DECODE,
) -> None:
    start = time.perf_counter()
    shape = (len(paths), size, size, 3) if color == "rgb" else (len(paths), size, size)
    with atomic_directory(final) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)

        def write(index: int, pixels: Tensor) -> None:
            images[index] = pixels.numpy()

        bad = decode_all(
            paths, size, num_workers, desc, skip_bad, sink=write, color=color, frames=frames, decode=decode
        )
        images.flush()
        meta = {"version": CACHE_VERSION, "size": size, "color": color, "count": len(paths), "bad": bad}
        meta["paths"] = [str(p) for p in paths]
        (tmp / "meta.json").write_text(json.dumps(meta))
    log.info("cached %d images at %dpx in %.1f s: %s", len(paths), size, time.perf_counter() - start, final)


class CachedImageDataset(ImageFileDataset):
    """:class:`ImageFileDataset` whose pixels come from a cache entry (``rows`` index its array); the
    memory map is opened lazily in each process, so DataLoader workers share the page cache, not copies."""

    def __init__(self, images: Path, rows: Sequence[int], *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.images, self.rows = Path(images), np.asarray(rows, dtype=np.int64)
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def pixels(self, index: int) -> Tensor:
        if self._array is None:
            self._array = np.load(self.images, mmap_mode="r")
        return torch.from_numpy(np.array(self._array[self.rows[index]]))
