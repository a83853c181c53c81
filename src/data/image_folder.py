"""Your own images sorted into one folder per class (the torchvision ``ImageFolder`` layout).

    <root>/<class>/**/*.png|jpg|jpeg|tif|tiff|bmp|dcm           -> seeded stratified train / val / test
    (DICOMs are found by content, so extensionless PACS / CD exports count; DICOMDIR is skipped)
    <root>/train/<class>/...  [<root>/val/<class>/...]  [<root>/test/<class>/...]   -> those splits

Class names are the folder names, sorted, unless ``dataset.class_names`` lists them (that order is the
label order; every folder must be listed). Two classes make a binary task, more a multiclass one. A split
folder that is missing (``val``, ``test``) is carved from ``train`` in the proportions of
``dataset.split_fractions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from src.data.files import SPLIT_NAMES, FileDataModule, FileSplit, complete_splits
from src.data.image_files import image_files
from src.errors import UserError

LAYOUT = "<root>/<class>/*.png (one folder per class), or <root>/train|val|test/<class>/*.png"


def class_folders(folder: Path) -> dict[str, list[Path]]:
    """{sub-folder name: its images} for each non-hidden sub-folder holding images."""
    found = {d.name: image_files(d) for d in sorted(folder.iterdir()) if d.is_dir() and d.name[0] != "."}
    return {name: files for name, files in found.items() if files}


class ImageFolderDataModule(FileDataModule):
    LAYOUT = LAYOUT

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        seed: int = 42,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        **kwargs,
    ) -> None:
        super().__init__(task="multiclass", class_names=class_names or (), **kwargs)
        self.seed, self.split_fractions = seed, tuple(split_fractions)

    def split_folders(self, root: Path) -> dict[str, Path]:
        folders = {}
        for split, names in SPLIT_NAMES.items():
            found = [d for d in root.iterdir() if d.is_dir() and d.name.lower() in names]
            if found:
                folders[split] = found[0]
        if folders and "train" not in folders:
            raise UserError(
                f"dataset.root={root} has {', '.join(p.name for p in folders.values())} but no train folder. "
                f"Expected layout: {LAYOUT}."
            )
        return folders

    def index(self, root: Path) -> dict[str, FileSplit]:
        folders = self.split_folders(root) or {"train": root}
        by_split = {split: class_folders(folder) for split, folder in folders.items()}
        names = self.class_names or tuple(sorted(by_split["train"]))
        if len(names) < 2:
            raise UserError(
                f"{folders['train']} holds {len(names)} class folder(s) with images; need at least 2. "
                f"Expected layout: {LAYOUT}."
            )
        for split, classes in by_split.items():
            unknown = sorted(set(classes) - set(names))
            if unknown:
                raise UserError(
                    f"{folders[split]} has class folders {unknown} that are not in dataset.class_names="
                    f"{list(names)}. Add them there or remove the folders."
                )
        self.class_names = tuple(names)
        self.task_type = "binary" if len(names) == 2 else "multiclass"
        parts = {}
        for split, classes in by_split.items():
            pairs = [(p, names.index(c)) for c in names for p in classes.get(c, [])]
            parts[split] = FileSplit(
                [p for p, _ in pairs], torch.as_tensor([y for _, y in pairs], dtype=torch.int64)
            )
        return complete_splits(parts, self.split_fractions, self.seed)
