"""MED-PEFT's split lists (``RL4M/MED-PEFT``, ``DatasetsSplits/<dataset>/``), read for any dataset that has them."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from src.errors import UserError


def medpeft_lists(
    split_dir: Path, split_train: str, folder: str, label_fraction: float = 1.0
) -> dict[str, tuple[Path, list[list[str]]]]:
    """Per split, the list file and its whitespace-split lines: ``<split_train>.txt`` (train_list, or its
    10 % / 1 % subsets train_10 / train_1), ``val_list.txt`` and ``test_list.txt``. The last line of
    MED-PEFT's files has no final newline, which ``splitlines`` handles.

    A ``label_fraction`` below 1 together with a list is refused: the list file already is the subset, and a
    second cut would train on a share of it while the run's name and settings say otherwise."""
    if label_fraction < 1:
        raise UserError(
            f"dataset.label_fraction={label_fraction} together with dataset.split_dir={split_dir} "
            f"(dataset.split_train={split_train}): MED-PEFT's list already is the labelled subset. Choose it "
            "with dataset.split_train=train_1|train_10|train_list (medpeft.labels=1pct|10pct|100pct does) and "
            "keep dataset.label_fraction=1.0, or drop dataset.split_dir to cut a fraction of our own split."
        )
    if not split_dir.is_dir():
        raise UserError(
            f"dataset.split_dir={split_dir} does not exist; point it at MED-PEFT's DatasetsSplits/{folder}."
        )
    out = {}
    for split, stem in (("train", split_train), ("val", "val_list"), ("test", "test_list")):
        path = split_dir / f"{stem}.txt"
        if not path.exists():
            raise UserError(
                f"{path} is missing: dataset.split_dir must be MED-PEFT's DatasetsSplits/{folder} folder "
                "(train_list.txt, val_list.txt, test_list.txt; dataset.split_train picks train_list, "
                "train_10 or train_1)."
            )
        out[split] = (path, [line.split() for line in path.read_text().splitlines() if line.strip()])
    return out


# The medpeft recipe's datasets whose MED-PEFT splits exist only as their lists.
LISTED = ("nih_cxr14", "chexpert", "rsna_pneumonia")


def check_medpeft_splits(cfg: DictConfig) -> None:
    """experiment=medpeft on NIH / CheXpert / RSNA without MED-PEFT's lists trains and tests on our own
    seeded splits (RSNA: 22,184 training images and 3,000 carved test patients instead of their 25,184 and the
    stage-2 test images), so its numbers are not the paper's: refused unless ``medpeft.allow_own_splits``."""
    medpeft = cfg.get("medpeft")
    if medpeft is None or cfg.dataset.get("name") not in LISTED or cfg.dataset.get("split_dir"):
        return
    if not medpeft.get("allow_own_splits", False):
        raise UserError(
            f"experiment=medpeft dataset={cfg.dataset.name} without dataset.split_dir: only MED-PEFT's own "
            "lists (DatasetsSplits/<dataset> of RL4M/MED-PEFT) reproduce the paper's splits. Pass "
            "dataset.split_dir=/path/to/DatasetsSplits/<dataset>, or medpeft.allow_own_splits=true to run on "
            "our seeded splits (not comparable with the paper's table)."
        )
