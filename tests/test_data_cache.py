"""The preprocessed cache: built once, reused, rebuilt when a source changes, safe to build twice at
once; unreadable images with dataset.on_bad_image; the source folder never written."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.cache import _build, build_or_load, entry_name
from src.data.image_files import read_image
from src.data.sz_cxr import ShenzhenCXRDataModule
from src.errors import UserError
from tests.test_data import COMMON, make_shenzhen
from tests.test_data_user import snapshot

NAMES = ["normal", "tuberculosis"]


def shenzhen(root: Path, cache_dir: Path, **kw) -> ShenzhenCXRDataModule:
    dm = ShenzhenCXRDataModule(
        class_names=NAMES, **{**COMMON, "root": str(root)}, cache=True, cache_dir=str(cache_dir), **kw
    )
    dm.setup()
    return dm


def entries(cache_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in cache_dir.glob("*/*/images.npy")}


def test_cache_is_built_once_reused_and_rebuilt_when_a_source_changes(tmp_path: Path) -> None:
    root, cache = make_shenzhen(tmp_path / "sz"), tmp_path / "cache"
    before = snapshot(root)
    dm = shenzhen(root, cache)
    built = entries(cache)
    assert sorted(name.split("_")[0] for name in built) == ["test", "train", "val"]
    assert {name.split("_")[1] for name in built if name.startswith("train")} == {"36px"}  # 32 + margin
    val = dm.datasets["val"]
    for i, path in enumerate(val.paths):  # eval pixels are exactly the decoded file, as predict sees it
        assert torch.equal(val.pixels(i), read_image(path, 32))
    image, _ = dm.datasets["train"][0]
    assert image.shape == (3, 32, 32)  # a random crop of the 36 px training image

    shenzhen(root, cache)
    assert entries(cache) == built  # reused, not rewritten

    changed = dm.splits["val"].paths[0]
    Image.fromarray(np.full((48, 40), 200, dtype=np.uint8)).save(changed)
    dm = shenzhen(root, cache)
    after = entries(cache)
    assert len(after) == 3 and {k for k in after if k.startswith("val")} != {
        k for k in built if k.startswith("val")
    }
    assert {k: v for k, v in after.items() if not k.startswith("val")} == {
        k: v for k, v in built.items() if not k.startswith("val")
    }
    i = dm.datasets["val"].paths.index(changed)
    assert torch.equal(dm.datasets["val"].pixels(i), torch.full((32, 32), 200, dtype=torch.uint8))
    assert not list(cache.rglob("*.tmp"))
    assert [p for p, _ in snapshot(root)] == [p for p, _ in before]  # nothing written into the source


def build(args: tuple) -> tuple[str, bool]:
    entry = build_or_load(*args)
    return str(entry.images), entry.built


def entry_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def test_two_jobs_building_the_same_entry_at_once_build_it_once(tmp_path: Path) -> None:
    paths = sorted((make_shenzhen(tmp_path / "sz", n=24) / "CXR_png").iterdir())
    args = (paths, 32, tmp_path / "cache", "sz_cxr", "train", 0, False)
    with mp.get_context("spawn").Pool(2) as pool:  # fresh processes, as two jobs are
        got = pool.map(build, [args, args])
    assert got[0][0] == got[1][0]
    assert sorted(built for _, built in got) == [False, True]  # one built it, the other waited and mapped it
    assert entry_dirs(tmp_path / "cache" / "sz_cxr") == [Path(got[0][0]).parent.name]
    cached = np.load(got[0][0], mmap_mode="r")
    assert all(np.array_equal(cached[i], read_image(p, 32).numpy()) for i, p in enumerate(paths))

    # The job that finishes second finds the entry in place: it drops its own copy without an error.
    final = Path(got[0][0]).parent
    stamp = final.stat().st_mtime_ns
    _build(paths, 32, final, 0, False, "again")
    assert final.stat().st_mtime_ns == stamp and len(entry_dirs(final.parent)) == 1
    assert entry_name(paths, "train", 32)[1] == final.name


def test_an_entry_in_use_by_another_job_is_never_removed(tmp_path: Path) -> None:
    paths = sorted((make_shenzhen(tmp_path / "sz", n=8) / "CXR_png").iterdir())
    args = (paths, 32, tmp_path / "cache", "sz_cxr", "train", 0, False)
    old, _ = build(args)  # this process maps it (and keeps it locked while it runs)
    Image.fromarray(np.full((40, 40), 9, dtype=np.uint8)).save(paths[0])  # a source changed: new version
    with mp.get_context("spawn").Pool(1) as pool:  # another job
        ((new, built),) = pool.map(build, [args])
    assert built and new != old
    folder = tmp_path / "cache" / "sz_cxr"
    assert entry_dirs(folder) == sorted([Path(old).parent.name, Path(new).parent.name])  # old kept: in use
    assert np.load(old, mmap_mode="r").shape == (8, 32, 32)
    # Once no job holds it, the next one that finds it stale removes it.
    assert build(args) == (new, False) and entry_dirs(folder) == [Path(new).parent.name]


def corrupt(root: Path) -> Path:
    bad = root / "CXR_png" / "CHNCXR_0003_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return bad


def test_bad_image_stops_the_cache_build_naming_it(tmp_path: Path) -> None:
    root = make_shenzhen(tmp_path / "sz")
    corrupt(root)
    with pytest.raises(UserError, match=r"CHNCXR_0003_1\.png.*dataset\.on_bad_image=skip"):
        shenzhen(root, tmp_path / "cache")
    assert len(entries(tmp_path / "cache")) < 3 and not list((tmp_path / "cache").rglob("*.tmp"))
    with pytest.raises(UserError, match=r"dataset\.cache_dir=.* inside dataset\.root"):
        shenzhen(root, root / "cache")


@pytest.mark.parametrize("cache", [True, False])
def test_skip_leaves_bad_images_out(tmp_path: Path, cache: bool) -> None:
    root = make_shenzhen(tmp_path / "sz")
    bad = corrupt(root)
    dm = ShenzhenCXRDataModule(
        class_names=NAMES,
        **{**COMMON, "root": str(root)},
        on_bad_image="skip",
        cache=cache,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup()  # without the cache, a first pass decodes every file to find the bad ones
    assert [p for p, _ in dm.bad_images] == [bad]
    assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == 19
    for split in ("val", "test"):
        ds = dm.datasets[split]
        assert bad not in ds.paths and ds.paths == dm.splits[split].paths
        assert all(torch.equal(ds.pixels(i), read_image(p, 32)) for i, p in enumerate(ds.paths))
    if cache:  # the entry remembers its bad file: a later run with on_bad_image=error still stops on it
        with pytest.raises(UserError, match=r"CHNCXR_0003_1\.png"):
            shenzhen(root, tmp_path / "cache")
    with pytest.raises(UserError, match=r"disappeared"):
        entry_name([bad.with_name("gone.png")], "train", 32)


def test_a_split_with_no_readable_image_is_an_error(tmp_path: Path) -> None:
    root = make_shenzhen(tmp_path / "sz", n=6)
    for p in (root / "CXR_png").iterdir():
        p.write_bytes(b"not a png")
    dm = ShenzhenCXRDataModule(class_names=NAMES, **{**COMMON, "root": str(root)}, on_bad_image="skip")
    with pytest.raises(UserError, match=r"every image of the train split is unreadable"):
        dm.setup()


def test_two_trainings_on_one_dataset_at_once_share_one_cache_and_both_train(tmp_path: Path) -> None:
    """Two jobs (a sweep's, or two users') start on the same dataset and cache folder at the same moment."""
    import subprocess
    import sys

    root = make_shenzhen(tmp_path / "sz", n=24)
    cache = tmp_path / "cache"
    common = [
        "dataset=sz_cxr",
        f"dataset.root={root}",
        f"dataset.cache_dir={cache}",
        "dataset.num_workers=0",
        "debug=fdr",
        "logger=none",
    ]
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "src.train",
                *common,
                f"seed={seed}",
                f"hydra.run.dir={tmp_path / str(seed)}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert all((tmp_path / str(seed) / "metrics.json").exists() for seed in (1, 2))
    built = sorted(p.parent.name.split("_")[0] for p in (cache / "sz_cxr").glob("*/images.npy"))
    assert built == ["test", "train", "val"]  # one entry per split, not one per job
