"""MedMNIST v2 / MedMNIST+ (Yang et al. 2023): the 2D subsets as published, one ``.npz`` per subset and size.

Expected file: ``<root>/<flag>.npz`` for 28 px or ``<root>/<flag>_<64|128|224>.npz`` (MedMNIST+), chosen by
``dataset.name`` (``pneumoniamnist``, ``chestmnist_224``, ...), with the keys ``{train,val,test}_images``
(uint8, (N, H, W) gray or (N, H, W, 3) RGB) and ``{train,val,test}_labels`` ((N, 1), or (N, 14) for
ChestMNIST). The official splits are used as shipped. Task type and class names follow MedMNIST's
``INFO``: ChestMNIST is multilabel, PneumoniaMNIST and BreastMNIST binary, the others multiclass (the
ordinal RetinaMNIST grades as 5 classes). Images are resized to the backbone's size on access.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from src.atomic import atomic_write
from src.data.arrays import ArrayDataset
from src.data.base import SPLITS, ClassificationDataModule, Normalize
from src.data.splits import check_label_fraction, label_fraction_indices
from src.errors import UserError

log = logging.getLogger(__name__)

ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)
# flag -> (task type, class names), from medmnist/info.py (MedMNIST v3).
SUBSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pathmnist": (
        "multiclass",
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
    ),
    "chestmnist": (
        "multilabel",
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
    ),
    "dermamnist": (
        "multiclass",
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
    ),
    "octmnist": (
        "multiclass",
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    ),
    "pneumoniamnist": ("binary", ("normal", "pneumonia")),
    "retinamnist": ("multiclass", ("0", "1", "2", "3", "4")),  # ordinal DR grade, trained as 5 classes
    "breastmnist": ("binary", ("malignant", "normal, benign")),
    "bloodmnist": (
        "multiclass",
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
    ),
    "tissuemnist": (
        "multiclass",
        (
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
    ),
    "organamnist": ("multiclass", ORGANS),
    "organcmnist": ("multiclass", ORGANS),
    "organsmnist": ("multiclass", ORGANS),
}
# Left/right organ labels: a horizontal flip would turn femur-left into femur-right.
NO_HFLIP = ("organamnist", "organcmnist", "organsmnist")
NAME = re.compile(r"^([a-z]+mnist)(?:_(64|128|224))?$")


def parse_name(name: str) -> str:
    """The subset flag of ``dataset.name`` (``bloodmnist_224`` -> ``bloodmnist``), or a UserError."""
    match = NAME.match(name)
    if match is None or match.group(1) not in SUBSETS:
        raise UserError(
            f"dataset.name={name!r} is not a 2D MedMNIST subset; choose one of {', '.join(SUBSETS)}, "
            "optionally with a MedMNIST+ size suffix _64, _128 or _224 (3D subsets are not supported)."
        )
    return match.group(1)


class ResizeNormalize:
    """uint8 image -> normalised (3, size, size) float; MedMNIST's 28-224 px images meet the backbone's size."""

    def __init__(self, size: int, normalize: Normalize) -> None:
        self.size, self.normalize = size, normalize

    def __call__(self, image: Tensor) -> Tensor:
        x = self.normalize(image)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]
        return x


class MedMNISTDataModule(ClassificationDataModule):
    """``label_fraction`` keeps a seeded, stratified share of the training arrays (MED-PEFT's protocol)."""

    def __init__(
        self, name: str, label_fraction: float = 1.0, label_fraction_seed: int = 0, **kwargs
    ) -> None:
        flag = parse_name(name)
        task, class_names = SUBSETS[flag]
        super().__init__(name=name, task=task, class_names=class_names, **kwargs)
        check_label_fraction(label_fraction)
        self.label_fraction, self.label_fraction_seed = label_fraction, label_fraction_seed
        self.train_indices = np.zeros(0, dtype=np.int64)
        if flag in NO_HFLIP and self.hflip:
            log.info("%s labels left and right organs: horizontal flips are turned off.", flag)
            self.hflip = False
        self.arrays: dict[str, np.ndarray] = {}

    def path(self) -> Path:
        if self.root is None:
            raise UserError(
                "dataset.root is not set; point it at the folder holding the MedMNIST .npz files."
            )
        root = Path(self.root).expanduser()
        return root if root.suffix == ".npz" else root / f"{self.name}.npz"

    def check(self) -> None:
        path = self.path()
        if not path.exists():
            raise UserError(
                f"{path} does not exist. Expected <dataset.root>/{self.name}.npz as published by MedMNIST "
                "(https://zenodo.org/records/10519652); set dataset.root and dataset.name."
            )
        with np.load(path) as npz:
            keys = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise UserError(f"{path} lacks the keys {missing} (has {npz.files}); expected {keys}.")
            self.arrays = {k: npz[k] for k in keys}
        # PathMNIST, DermaMNIST, BloodMNIST, ... ship (N, H, W, 3) colour images.
        self.color = "rgb" if self.arrays["train_images"].ndim == 4 else "gray"

    def targets(self, split: str) -> Tensor:
        labels, n, c = (
            self.arrays[f"{split}_labels"],
            len(self.arrays[f"{split}_images"]),
            len(self.class_names),
        )
        if self.task_type == "multilabel":
            expected, ok = f"({n}, {c}) of 0/1", labels.shape == (n, c) and np.isin(labels, (0, 1)).all()
        else:
            expected = f"({n}, 1) of 0..{c - 1}"
            ok = labels.reshape(len(labels), -1).shape == (n, 1) and labels.min() >= 0 and labels.max() < c
        if not ok:
            raise UserError(
                f"{self.path()}: {split}_labels has shape {labels.shape}; {self.name} needs {expected}."
            )
        if self.task_type == "multilabel":
            return torch.from_numpy(labels.astype(np.float32))
        return torch.from_numpy(labels.reshape(-1).astype(np.int64))

    def build_split(self, split: str) -> ArrayDataset:
        if not self.arrays:
            self.check()
        transform = ResizeNormalize(self.image_size, self.normalize)
        images, targets = torch.from_numpy(self.arrays[f"{split}_images"]), self.targets(split)
        if split == "train":
            self.train_indices = label_fraction_indices(
                targets.numpy(), self.label_fraction, self.label_fraction_seed
            )
            keep = torch.from_numpy(self.train_indices)
            images, targets = images[keep], targets[keep]
        return ArrayDataset(images, targets, transform, self.hflip and split == "train")

    def sample_ids(self, split: str) -> list[str]:
        """The row of ``<split>_images`` in the .npz (the training rows ``label_fraction`` kept)."""
        ids = super().sample_ids(split)
        return [str(i) for i in self.train_indices] if split == "train" else ids

    def report(self, out: Path) -> tuple[dict[str, Any], list[Path]]:
        """Split sizes for metrics.json; ``train_indices.txt`` (rows of ``train_images`` used) in the run dir."""
        listing = out / "train_indices.txt"
        with atomic_write(listing) as tmp:
            tmp.write_text("".join(f"{i}\n" for i in self.train_indices))
        entries: dict[str, Any] = {f"data/{s}_size": len(self.datasets[s]) for s in self.datasets}
        return entries | {"data/label_fraction": self.label_fraction}, [listing]
