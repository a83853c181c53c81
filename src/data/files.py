"""Datasets whose splits are image files on disk: the machinery every official layout shares.

A dataset module only says how to read its layout (:meth:`FileDataModule.index`: file lists, labels and
patient ids per split, no pixels). This base checks the root, applies ``dataset.label_fraction`` to the
training split, builds the datasets (decoded once into the preprocessed cache of :mod:`src.data.cache`
with ``dataset.cache=true``, else on access), leaves out unreadable files with ``dataset.on_bad_image=skip``
and reports what was used.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor
from torch.utils.data import Dataset

from src.atomic import atomic_write
from src.data.base import SPLITS, ClassificationDataModule
from src.data.cache import CachedImageDataset, CacheEntry, build_or_load, decode_all
from src.data.dicom import check_frame_policy
from src.data.image_files import COLORS, ImageFileDataset
from src.data.protocol_dataset import ProtocolImageDataset
from src.data.splits import check_label_fraction, label_fraction_indices, split_by_fractions
from src.data.transforms import PROTOCOLS, Decode, protocol_transform
from src.errors import UserError

log = logging.getLogger(__name__)

# What a split folder or a CSV split column may call each split, lower-case.
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass
class FileSplit:
    """One split: ``targets`` is (N,) int64 for binary / multiclass, (N, C) float32 for multilabel
    (NaN where a label is unknown and must be left out of loss and metrics); ``groups`` are patient ids,
    so that anything carved from a split keeps each patient on one side; ``meta`` holds subgroup attributes
    (``sex``, ``age``, ...: one raw value per image) where the layout records them."""

    paths: list[Path]
    targets: Tensor
    groups: list[str] | None = None
    meta: dict[str, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Collection[int]) -> FileSplit:
        """The items at ``indices``, in that order."""
        idx = list(indices)
        return FileSplit(
            [self.paths[i] for i in idx],
            self.targets[idx],
            None if self.groups is None else [self.groups[i] for i in idx],
            None if self.meta is None else {k: [v[i] for i in idx] for k, v in self.meta.items()},
        )


def check_labels_match(
    labelled: Collection[str],
    on_disk: Collection[str],
    label_source: str | Path,
    image_dir: str | Path,
    *,
    allow_unlabelled_files: bool = True,
    allow_missing_files: bool = False,
    show: int = 5,
) -> None:
    """Raise a :class:`UserError` listing the first names labelled in ``label_source`` without a file in
    ``image_dir`` (unless ``allow_missing_files``) and, unless ``allow_unlabelled_files``, the first files
    without a label. Names are whatever key the layout uses (file names, relative paths, patient ids)."""
    labelled_set, disk_set = set(labelled), set(on_disk)
    problems = []
    missing = [] if allow_missing_files else sorted(labelled_set - disk_set)
    if missing:
        problems.append(
            f"{len(missing)} labelled in {label_source} have no file in {image_dir} "
            f"(first: {', '.join(missing[:show])})"
        )
    unlabelled = [] if allow_unlabelled_files else sorted(disk_set - labelled_set)
    if unlabelled:
        problems.append(
            f"{len(unlabelled)} files in {image_dir} have no label in {label_source} "
            f"(first: {', '.join(unlabelled[:show])})"
        )
    if problems:
        raise UserError(
            "labels and files do not match: "
            + "; ".join(problems)
            + ". Check dataset.root and that the label file belongs to these images."
        )


def complete_splits(
    parts: dict[str, FileSplit], fractions: Sequence[float], seed: int
) -> dict[str, FileSplit]:
    """``parts`` with each of val / test that it lacks carved from its train split, seeded and
    stratified (patients whole), in the proportions ``fractions`` (train, val, test) give them."""
    if (
        len(fractions) != 3
        or any(isinstance(f, bool) or not isinstance(f, (int, float)) or f <= 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
    ):
        raise UserError(
            f"dataset.split_fractions={list(fractions)} must be three positive shares of train, val and "
            "test that add up to 1, e.g. [0.8, 0.1, 0.1]."
        )
    missing = [s for s in SPLITS[1:] if s not in parts]
    if not missing:
        return parts
    pool = parts["train"]
    shares = [fractions[0], *(fractions[SPLITS.index(s)] for s in missing)]
    if len(pool) < len(shares):
        raise UserError(
            f"{len(pool)} training images cannot be cut into train, {' and '.join(missing)}; add images "
            "or provide the missing split."
        )
    cut = split_by_fractions(pool.targets.numpy(), shares, seed, pool.groups)
    return {**parts, **{s: pool.subset(idx) for s, idx in zip(["train", *missing], cut, strict=True)}}


class FileDataModule(ClassificationDataModule):
    """Subclasses set :attr:`LAYOUT` (shown in every error about the root) and implement :meth:`index`.

    ``label_fraction`` in (0, 1] keeps a seeded (``label_fraction_seed``), stratified, patient-grouped
    subset of the training split only (MED-PEFT's 1 / 10 / 100 % protocol); val and test stay whole.

    ``color``: ``gray`` decodes to 8-bit grayscale (radiographs), ``rgb`` keeps the three colour channels
    (stained cells, photographs); the cache keeps one entry per mode. Training images are loaded
    ``crop_margin`` larger than ``image_size`` and randomly cropped back (plus
    the ``hflip``); val and test images are loaded at ``image_size`` whole, exactly as ``src.predict`` sees
    them. ``cache=True`` decodes each split once into ``cache_dir`` (see :mod:`src.data.cache`).
    ``on_bad_image``: ``error`` stops at the first unreadable file, naming it; ``skip`` leaves such files
    out, logging each and counting them in metrics.json (without the cache, that needs one decoding pass
    over every split before training); reasons as :class:`~src.data.image_files.UnreadableImage` gives
    them. ``dicom_frames``: the frame of a multi-frame DICOM to train on (``error`` refuses such files
    naming the option, ``first``, ``middle``; see :mod:`src.data.dicom`).
    """

    LAYOUT: ClassVar[str] = ""

    def __init__(
        self,
        label_fraction: float = 1.0,
        label_fraction_seed: int = 0,
        cache: bool = False,
        cache_dir: str | None = None,
        crop_margin: float = 0.125,
        on_bad_image: str = "error",
        color: str = "gray",
        dicom_frames: str = "error",
        resize: str = "pil",
        dicom_intensity: str = "window",
        protocol: str = "squash",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.color, self.dicom_frames = color, dicom_frames
        # The papers' decoding and transform rules (src.data.transforms): resize pil | tensor (MeLo),
        # dicom_intensity window | max255 (MED-PEFT), protocol squash | medpeft_mrm | medpeft_cxr_mae.
        self.decode, self.protocol = Decode(resize, dicom_intensity), protocol
        self.label_fraction, self.label_fraction_seed = label_fraction, label_fraction_seed
        self.cache, self.cache_dir, self.crop_margin = cache, cache_dir, crop_margin
        self.on_bad_image = on_bad_image
        self.bad_images: list[tuple[Path, str]] = []
        self.splits: dict[str, FileSplit] = {}
        self.full_train_size = 0

    def validate(self) -> None:
        """The shared keys, checked in :meth:`check` (inside the entry points' one-line error handling)."""
        check_label_fraction(self.label_fraction)
        if self.color not in COLORS:
            raise UserError(
                f"dataset.color={self.color!r} must be gray (8-bit grayscale, radiographs) or rgb (colour "
                "images such as stained cells or photographs)."
            )
        check_frame_policy(self.dicom_frames, "dataset.dicom_frames", training=True)
        if self.on_bad_image not in ("error", "skip"):
            raise UserError(f"dataset.on_bad_image={self.on_bad_image!r} must be error or skip.")
        if self.protocol not in PROTOCOLS:
            raise UserError(f"dataset.protocol={self.protocol!r} must be one of {', '.join(PROTOCOLS)}.")
        if self.protocol != "squash" and self.on_bad_image == "skip":
            raise UserError(
                f"dataset.on_bad_image=skip needs the default pipeline; dataset.protocol={self.protocol} decodes "
                "each file on access, so every file must be readable: set dataset.on_bad_image=error."
            )
        margin = self.crop_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 1:
            raise UserError(
                f"dataset.crop_margin={margin!r} must be in [0, 1]: training images are loaded that share "
                "larger than the training resolution and randomly cropped back (0 = no crop)."
            )
        if self.cache and not self.cache_dir:
            raise UserError("dataset.cache=true needs dataset.cache_dir (default ${paths.data_dir}/cache).")

    @abstractmethod
    def index(self, root: Path) -> dict[str, FileSplit]:
        """Read the layout and label files under ``root`` (never the pixels) into train / val / test."""

    def require(self, path: Path, what: str = "file") -> Path:
        """``path`` if it exists, else a :class:`UserError` naming it and the expected layout."""
        if not path.exists():
            raise UserError(
                f"{what} {path} not found under dataset.root={self.root}. Expected layout: {self.LAYOUT}."
            )
        return path

    def check(self) -> None:
        if self.splits:
            return
        self.validate()
        if self.root is None:
            raise UserError(f"dataset.root is not set. Expected layout: {self.LAYOUT}.")
        root = Path(self.root).expanduser()
        if not root.exists():
            raise UserError(
                f"dataset.root={root} does not exist. Expected layout: {self.LAYOUT}. "
                f"Pass dataset.root=/path/to/{self.name}."
            )
        splits = self.index(root)
        empty = [s for s in SPLITS if not len(splits.get(s, ()))]
        if empty:
            raise UserError(
                f"dataset.root={root} gives no images for the {', '.join(empty)} split(s). "
                f"Expected layout: {self.LAYOUT}."
            )
        train = splits["train"]
        self.full_train_size = len(train)
        if self.label_fraction < 1:
            keep = label_fraction_indices(
                train.targets.numpy(), self.label_fraction, self.label_fraction_seed, train.groups
            )
            splits["train"] = train.subset(keep)
            log.info(
                "dataset.label_fraction=%g: training on %d of %d images",
                self.label_fraction,
                len(keep),
                len(train),
            )
        self.splits = splits

    def load_size(self, split: str) -> int:
        """Pixels per side an image of ``split`` is decoded to (the margin is for the training crop)."""
        return math.ceil(self.image_size * (1 + self.crop_margin)) if split == "train" else self.image_size

    def cache_entry(self, split: str) -> CacheEntry:
        """The split's cache entry, built once across processes and jobs (see :mod:`src.data.cache`)."""
        root = Path(self.root).expanduser().resolve()
        cache_dir = Path(self.cache_dir).expanduser().resolve()
        if cache_dir.is_relative_to(root):
            raise UserError(
                f"dataset.cache_dir={cache_dir} lies inside dataset.root={root}, whose files are never "
                "written. Point dataset.cache_dir elsewhere (default ${paths.data_dir}/cache)."
            )
        return build_or_load(
            self.splits[split].paths,
            self.load_size(split),
            cache_dir,
            self.name,
            split,
            self.num_workers,
            self.on_bad_image == "skip",
            self.color,
            self.dicom_frames,
            self.decode,
        )

    def prepare_data(self) -> None:
        """Lightning calls this on one process per node before any sets up: the cache is decoded there,
        while the other DDP ranks wait, then map it."""
        if self.cache:
            self.check()
            mean, std = (t.flatten().tolist() for t in (self.normalize.mean, self.normalize.std))
            for split in SPLITS:
                if protocol_transform(self.protocol, split, self.image_size, mean, std) is None:
                    self.cache_entry(split)  # a paper protocol's own transforms decode on access instead

    def build_split(self, split: str) -> Dataset:
        self.check()
        mean, std = (t.flatten().tolist() for t in (self.normalize.mean, self.normalize.std))
        transform = protocol_transform(self.protocol, split, self.image_size, mean, std)
        if transform is not None:  # whole images through the paper's own transforms, decoded on access
            part = self.splits[split]
            return ProtocolImageDataset(part.paths, part.targets, transform, self.color, self.decode)
        part, size = self.splits[split], self.load_size(split)
        entry, keep = None, range(len(part))
        if self.cache:
            entry = self.cache_entry(split)
            bad = entry.bad
        elif self.on_bad_image == "skip":
            desc = f"checking {self.name}/{split}"
            bad = decode_all(
                part.paths,
                size,
                self.num_workers,
                desc,
                True,
                color=self.color,
                frames=self.dicom_frames,
                decode=self.decode,
            )
        else:
            bad = []
        if bad:
            for i, message in bad:
                log.warning("dataset.on_bad_image=skip: leaving out %s", message)
                self.bad_images.append((part.paths[i], message))
            dropped = {i for i, _ in bad}
            keep = [i for i in range(len(part)) if i not in dropped]
            if not keep:
                raise UserError(f"every image of the {split} split is unreadable (first: {bad[0][1]}).")
            part = self.splits[split] = part.subset(keep)
        args = (part.paths, part.targets, self.image_size, self.normalize, self.hflip and split == "train")
        if entry is not None:
            return CachedImageDataset(
                entry.images, keep, *args, load_size=size, color=self.color, frames=self.dicom_frames
            )
        return ImageFileDataset(
            *args, load_size=size, color=self.color, frames=self.dicom_frames, decode=self.decode
        )

    def sample_ids(self, split: str) -> list[str]:
        """Each image's path relative to the dataset root (after ``on_bad_image=skip`` left any out)."""
        self.check()
        root = Path(self.root).expanduser()
        return [relative_to(p, root) for p in self.splits[split].paths]

    def split_targets(self, split: str) -> Tensor:
        self.check()
        return self.splits[split].targets

    def subgroups(self, split: str) -> dict[str, list[str]]:
        self.check()
        return dict(self.splits[split].meta or {})

    def report(self, out: Path) -> tuple[dict[str, Any], list[Path]]:
        """Split sizes for metrics.json; ``train_files.txt`` (the training images used, relative to the
        root) in the run dir."""
        self.check()
        root = Path(self.root).expanduser()
        listing = out / "train_files.txt"
        with atomic_write(listing) as tmp:
            tmp.write_text("".join(f"{relative_to(p, root)}\n" for p in self.splits["train"].paths))
        entries: dict[str, Any] = {f"data/{s}_size": len(self.splits[s]) for s in SPLITS}
        entries |= {"data/train_size_full": self.full_train_size, "data/label_fraction": self.label_fraction}
        entries["data/bad_images"] = len(self.bad_images)
        files = [listing]
        if self.bad_images:
            files.append(out / "skipped_images.txt")
            with atomic_write(files[-1]) as tmp:
                tmp.write_text("".join(f"{relative_to(p, root)}\t{msg}\n" for p, msg in self.bad_images))
        return entries, files


def relative_to(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies under it, else as given."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
