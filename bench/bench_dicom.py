"""DICOM decoding speed: per transfer syntax on a real corpus, and the first (cache-building) epoch of large
generated radiographs, DICOM vs PNG; plus the decoder plugins side by side (why pylibjpeg, not GDCM).

1. Corpus: every file of pydicom's test files plus pydicom-data that the reader decodes, through
   ``read_image(path, 224)`` (decode + modality / VOI LUT + resize, first frame of multi-frame files), on one
   core; images/s per transfer syntax.
2. Decoder plugins: for each installed plugin (pylibjpeg, gdcm), how many compressed corpus files it decodes
   alone, its decode time over the files both decode, its 2048 x 2048 JPEG-lossless decode time and its
   installed size. GDCM is not a project dependency: make it importable to include it
   (``pip install --target /tmp/gdcm python-gdcm`` and ``PYTHONPATH=/tmp/gdcm``).
3. First epoch: ``--images`` generated 2048 x 2048 16-bit (12 bits stored) radiograph-like DICOMs,
   uncompressed and JPEG lossless (process 14, encoded with GDCM when importable, else left out), against
   16-bit PNGs of the same pixels, each through the preprocessed-cache build of ``dataset.cache=true``
   (src/data/cache.py) at 252 px (224 + crop margin), one decoding process.

    python bench/bench_dicom.py [--images 200] [--size 2048] [--out bench/results/dicom.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pydicom
import torch
from PIL import Image
from write_result import write_result

from src.config import PROJECT_ROOT
from src.data.cache import build_or_load
from src.data.dicom import is_dicom, is_dicomdir
from src.data.image_files import UnreadableImage, read_image

PLUGIN_DISTS = {
    "pylibjpeg": ["pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"],
    "gdcm": ["python-gdcm"],
}


def corpus() -> list[Path]:
    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    spec = importlib.util.find_spec("data_store")  # pydicom-data's package
    if spec is not None:
        roots.append(Path(spec.origin).parent / "data")
    files = sorted(p for r in roots for p in r.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return [p for p in files if is_dicom(p) and not is_dicomdir(p)]


def syntax_of(path: Path) -> str:
    meta = pydicom.filereader.read_file_meta_info(path) if pydicom.misc.is_dicom(path) else {}
    uid = meta.get("TransferSyntaxUID")
    return uid.name if uid else "none in file (preamble-less, native)"


def timed(fn, min_seconds: float = 0.2) -> float:
    """Seconds per call of ``fn``: repeated until ``min_seconds`` have passed (at least once)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def corpus_table(files: list[Path]) -> str:
    by_syntax: dict[str, list[float]] = defaultdict(list)
    refused = 0
    for path in files:
        try:
            read_image(path, 224, frames="first")
        except UnreadableImage:
            refused += 1
            continue
        by_syntax[syntax_of(path)].append(timed(lambda p=path: read_image(p, 224, frames="first"), 0.05))
    lines = [
        f"Corpus: {len(files)} DICOM files with data sets, {len(files) - refused} decoded, {refused} refused "
        "(no pixel data, truncated, corrupt: see tests/test_dicom_corpus.py).\n",
        "| transfer syntax | files | images/s (one core) | ms per image (median) |",
        "|---|---:|---:|---:|",
    ]
    for name, times in sorted(by_syntax.items(), key=lambda kv: -len(kv[1])):
        lines.append(
            f"| {name} | {len(times)} | {len(times) / sum(times):.1f} | {np.median(times) * 1000:.1f} |"
        )
    return "\n".join(lines)


def installed_mb(dists: list[str]) -> float | None:
    try:
        return (
            sum(
                f.locate().stat().st_size
                for d in dists
                for f in importlib.metadata.distribution(d).files or []
                if f.locate().exists()
            )
            / 2**20
        )
    except importlib.metadata.PackageNotFoundError:
        return None


def decode_with(path: Path, plugin: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    return pixel_array(str(path), decoding_plugin=plugin, index=0 if _frames(path) > 1 else None)


def _frames(path: Path) -> int:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.get("NumberOfFrames", 1) or 1)


def plugin_table(files: list[Path], big_jpeg: Path | None, size: int) -> str:
    compressed = [
        p
        for p in files
        if pydicom.misc.is_dicom(p)
        and (uid := pydicom.filereader.read_file_meta_info(p).get("TransferSyntaxUID"))
        and uid.is_compressed
        and uid != pydicom.uid.DeflatedExplicitVRLittleEndian
    ]
    plugins = [p for p in PLUGIN_DISTS if importlib.util.find_spec(p) is not None]
    ok: dict[str, set[Path]] = {}
    for plugin in plugins:
        ok[plugin] = set()
        for path in compressed:
            try:
                decode_with(path, plugin)
                ok[plugin].add(path)
            except Exception:  # a plugin that cannot decode this file
                pass
    both = set.intersection(*ok.values()) if ok else set()
    lines = [
        f"Decoder plugins alone (`decoding_plugin=`) over the corpus's {len(compressed)} compressed files, "
        "first frame each (without a plugin, RLE still decodes with pydicom's own slower decoder):\n",
        f"| plugin | files decoded | s over the files all decode | {size}² JPEG lossless decode, ms | installed MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for plugin in plugins:
        total = sum(timed(lambda p=p, plugin=plugin: decode_with(p, plugin), 0.02) for p in both)
        big = (
            f"{timed(lambda plugin=plugin: decode_with(big_jpeg, plugin), 0.5) * 1000:.0f}"
            if big_jpeg
            else "n/a"
        )
        size = installed_mb(PLUGIN_DISTS[plugin])
        lines.append(
            f"| {plugin} | {len(ok[plugin])} | {total:.2f} | {big} | {size:.1f} |"
            if size is not None
            else f"| {plugin} | {len(ok[plugin])} | {total:.2f} | {big} | ? |"
        )
    only = {p: sorted(f.name for f in ok[p] - both) for p in plugins}
    lines.append(
        "\nDecoded by one plugin only: " + "; ".join(f"{p}: {', '.join(v) or '-'}" for p, v in only.items())
    )
    return "\n".join(lines)


def radiograph(size: int, seed: int) -> np.ndarray:
    """12-bit smooth anatomy-like field plus noise (compresses like a radiograph)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(500, 3500, (16, 16)).astype(np.float32))
    field = np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(field + rng.normal(0, 20, (size, size)), 0, 4095).astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def jpeg_lossless(src: Path, dst: Path) -> None:
    """Re-encode with GDCM as JPEG lossless, process 14 selection value 1 (the archive default)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM could not encode {src}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.Write()


def generate(images: int, size: int, work: Path) -> dict[str, list[Path]]:
    """The same pixels as 16-bit PNG, uncompressed DICOM and (with GDCM) extensionless JPEG-lossless DICOM."""
    arms: dict[str, list[Path]] = {"PNG 16-bit": [], "DICOM uncompressed": []}
    has_gdcm = importlib.util.find_spec("gdcm") is not None
    if has_gdcm:
        arms["DICOM JPEG lossless"] = []
    for name in ("png", "dcm", "jll"):
        (work / name).mkdir()
    for i in range(images):
        pixels = radiograph(size, i)
        png, dcm, jll = (
            work / "png" / f"{i:04d}.png",
            work / "dcm" / f"{i:04d}.dcm",
            work / "jll" / f"IM{i:06d}",
        )
        Image.fromarray(pixels).save(png)
        write_dicom(dcm, pixels)
        arms["PNG 16-bit"].append(png)
        arms["DICOM uncompressed"].append(dcm)
        if has_gdcm:
            jpeg_lossless(dcm, jll)
            arms["DICOM JPEG lossless"].append(jll)
    return arms


def first_epoch_table(arms: dict[str, list[Path]], size: int, work: Path) -> str:
    images = len(arms["PNG 16-bit"])
    lines = [
        f"First epoch (cache build at 252 px, one process) of {images} generated {size}×{size} 16-bit images "
        "(12 bits stored), the same pixels in each format:\n",
        "| source | MB on disk | seconds | images/s | speed vs PNG |",
        "|---|---:|---:|---:|---:|",
    ]
    seconds = {}
    for name, paths in arms.items():
        cache = work / f"cache_{len(seconds)}"
        start = time.perf_counter()
        build_or_load(paths, 252, cache, "bench", "train", 0, False)
        seconds[name] = time.perf_counter() - start
        shutil.rmtree(cache)
        mb = sum(p.stat().st_size for p in paths) / 2**20
        lines.append(
            f"| {name} | {mb:.0f} | {seconds[name]:.1f} | {images / seconds[name]:.1f} | "
            f"{seconds['PNG 16-bit'] / seconds[name]:.2f}x |"
        )
    if "DICOM JPEG lossless" not in arms:
        lines.append("\nJPEG lossless arm left out: GDCM (its encoder here) is not importable.")
    return "\n".join(lines)


def without_plugin(label: str) -> None:
    """Unregister ``label`` from every pydicom decoder, so the rest of the run uses the shipped plugins."""
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

    for decoder, _ in _PIXEL_DATA_DECODERS.values():
        if label in decoder._available or label in decoder._unavailable:
            decoder.remove_plugin(label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results" / "dicom.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = corpus()
    with tempfile.TemporaryDirectory(prefix="bench-dicom-") as tmp:
        arms = generate(args.images, args.size, Path(tmp))
        plugins = plugin_table(files, (arms.get("DICOM JPEG lossless") or [None])[0], args.size)
        without_plugin("gdcm")  # the corpus and first-epoch rows use the project's own decoders only
        epoch = first_epoch_table(arms, args.size, Path(tmp))
    table = corpus_table(files)
    header = (
        f"# DICOM decoding — {dt.date.today()} — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (load average {os.getloadavg()[0]:.1f}): "
        "absolute numbers are noisy, ratios within a table are measured side by side.\n\n"
        f"pydicom {pydicom.__version__}; `python bench/bench_dicom.py --images {args.images} --size {args.size}`\n"
    )
    write_result(args.out, "\n\n".join([header, table, plugins, epoch]) + "\n")


if __name__ == "__main__":
    main()
