"""MED-PEFT's split lists (``RL4M/MED-PEFT``, ``DatasetsSplits/<dataset>/``), read for any dataset that has them."""

from __future__ import annotations

from pathlib import Path

from src.errors import UserError


def medpeft_lists(split_dir: Path, split_train: str, folder: str) -> dict[str, tuple[Path, list[list[str]]]]:
    """Per split, the list file and its whitespace-split lines: ``<split_train>.txt`` (train_list, or its
    10 % / 1 % subsets train_10 / train_1), ``val_list.txt`` and ``test_list.txt``. The last line of
    MED-PEFT's files has no final newline, which ``splitlines`` handles."""
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
