"""dataset.color: colour images (stained cells, photographs) keep their RGB channels through decoding, the
cache, augmentation, training and prediction; grayscale datasets are decoded as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from src.data.base import Normalize
from src.data.cache import entry_name
from src.data.image_files import read_grayscale, read_image
from src.data.image_folder import ImageFolderDataModule
from src.errors import UserError
from src.predict import build_bank, predict
from src.train import train
from tests.conftest import compose_train
from tests.test_datasets_layouts import make_blood_cells, make_medmnist
from tests.test_predict import write_dicom

RED, BLUE = (220, 20, 30), (10, 40, 200)


def solid(path: Path, rgb: tuple[int, int, int], mode: str = "RGB", size: int = 40) -> Path:
    """A one-colour image saved in ``mode`` (RGB, RGBA, P = palette)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size, size), rgb)
    (im.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else im.convert(mode)).save(path)
    return path


def assert_colour(pixels: torch.Tensor, rgb: tuple[int, int, int], tol: int = 3) -> None:
    assert pixels.dtype == torch.uint8 and pixels.shape[-1] == 3
    mean = pixels.reshape(-1, 3).float().mean(0)
    assert torch.allclose(mean, torch.tensor(rgb, dtype=torch.float32), atol=tol), mean


@pytest.mark.parametrize(
    ("name", "mode"), [("a.png", "RGB"), ("b.png", "RGBA"), ("c.png", "P"), ("d.bmp", "RGB")]
)
def test_rgb_sources_decode_to_their_colour(tmp_path: Path, name: str, mode: str) -> None:
    path = solid(tmp_path / name, RED, mode)
    rgb = read_image(path, 32, "rgb")
    assert rgb.shape == (32, 32, 3)
    assert_colour(rgb, RED)
    gray = read_image(path, 32)  # the default stays grayscale: luma of the red
    assert gray.shape == (32, 32) and abs(int(gray[0, 0]) - round(0.299 * 220 + 0.587 * 20 + 0.114 * 30)) <= 1


def test_jpeg_keeps_red_high_and_green_blue_low(tmp_path: Path) -> None:
    rgb = read_image(solid(tmp_path / "cell.jpeg", RED), 32, "rgb")
    r, g, b = rgb.reshape(-1, 3).float().mean(0)
    assert r > 200 and g < 40 and b < 50


def test_gray_sources_and_dicoms_repeat_into_three_equal_channels(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1))
    png = tmp_path / "g.png"
    Image.fromarray(ramp).save(png)
    dcm = write_dicom(tmp_path / "g.dcm", ramp.astype(np.uint16) * 16)
    for path in (png, dcm):
        gray, rgb = read_image(path, 32), read_image(path, 32, "rgb")
        assert rgb.shape == (32, 32, 3) and all(torch.equal(rgb[..., c], gray) for c in range(3))
    assert torch.equal(read_image(png, 32), read_grayscale(png, 32))
    with pytest.raises(UserError, match="colour mode 'cmyk' is unknown"):
        read_image(png, 32, "cmyk")


def write_rgb_dicom(path: Path, pixels: np.ndarray) -> Path:
    """An 8-bit RGB DICOM (interleaved samples), as slide scanners and endoscopes write them."""
    ds = pydicom.dcmread(write_dicom(path, np.zeros(pixels.shape[:2])))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_colour_dicom_keeps_its_colour(tmp_path: Path) -> None:
    path = write_rgb_dicom(tmp_path / "slide.dcm", np.broadcast_to(np.array(RED), (40, 40, 3)))
    assert_colour(read_image(path, 32, "rgb"), RED, tol=0)
    assert torch.equal(read_image(path, 32), read_image(solid(tmp_path / "red.png", RED), 32))


@pytest.mark.parametrize(("flag", "color"), [("bloodmnist", "rgb"), ("pneumoniamnist", "gray")])
def test_medmnist_records_the_colour_of_its_arrays(tmp_path: Path, flag: str, color: str) -> None:
    root = make_medmnist(tmp_path, flag).parent
    cfg = compose_train(["dataset=medmnist", f"dataset.name={flag}", f"dataset.root={root}"], tmp_path)
    dm = instantiate(cfg.dataset)
    dm.check()
    assert dm.color == color


def folder_module(tmp_path: Path, color: str, cache: bool) -> ImageFolderDataModule:
    """Six red and six blue photographs in class folders (written once per tmp_path)."""
    root = tmp_path / "photos"
    if not root.exists():
        for i in range(6):
            solid(root / "red" / f"r{i}.png", RED)
            solid(root / "blue" / f"b{i}.png", BLUE)
    return ImageFolderDataModule(
        name="photos",
        root=str(root),
        image_size=32,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        num_workers=0,
        color=color,
        cache=cache,
        cache_dir=str(tmp_path / "cache"),
        split_fractions=[0.5, 0.25, 0.25],
    )


@pytest.mark.parametrize("cache", [True, False])
def test_rgb_survives_cache_crop_and_flip(tmp_path: Path, cache: bool) -> None:
    dm = folder_module(tmp_path, "rgb", cache)
    dm.setup()
    train_set = dm.datasets["train"]
    for i, path in enumerate(train_set.paths):
        raw = train_set.pixels(i)
        assert raw.shape == (36, 36, 3)  # loaded crop_margin larger for the random crop
        assert torch.equal(raw, read_image(path, 36, "rgb"))
        assert_colour(raw, RED if path.parent.name == "red" else BLUE)
        image, label = train_set[i]  # cropped, normalised, maybe flipped
        assert image.shape == (3, 32, 32)
        red_wins = bool(image[0].mean() > image[2].mean())
        assert red_wins == (path.parent.name == "red") == (dm.class_names[int(label)] == "red")
    if cache:
        (entry,) = (tmp_path / "cache" / "photos").glob("train_*")
        assert "_rgb_" in entry.name and np.load(entry / "images.npy").shape == (len(train_set), 36, 36, 3)


def test_gray_and_rgb_cache_entries_are_separate(tmp_path: Path) -> None:
    paths = [solid(tmp_path / "x.png", RED)]
    assert entry_name(paths, "train", 32, "gray")[0] != entry_name(paths, "train", 32, "rgb")[0]
    modules = {}
    for color in ("rgb", "gray", "rgb"):  # neither mode evicts the other's entry as stale
        modules[color] = folder_module(tmp_path, color, cache=True)
        modules[color].setup()
    shapes = {
        p.name.split("_")[2]: np.load(p / "images.npy").shape
        for p in (tmp_path / "cache" / "photos").glob("val_*")
    }
    assert shapes == {"gray": (3, 32, 32), "rgb": (3, 32, 32, 3)}
    gray_val = modules["gray"].datasets["val"]  # grayscale decodes exactly as before
    assert all(torch.equal(gray_val.pixels(i), read_grayscale(p, 32)) for i, p in enumerate(gray_val.paths))


def test_unknown_color_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"dataset.color='RGB' must be gray .* or rgb"):
        folder_module(tmp_path, "RGB", cache=False).check()


def test_blood_cells_trains_in_rgb_and_predicts_in_rgb(tmp_path: Path) -> None:
    root = make_blood_cells(tmp_path / "source")
    overrides = [
        "dataset=blood_cells",
        f"dataset.root={root}",
        "dataset.num_workers=0",
        "dataset.batch_size=4",
    ]
    cfg = compose_train([*overrides, "backbone=tiny", "debug=fdr", "logger=none"], tmp_path)
    assert cfg.dataset.color == "rgb"
    metrics = train(cfg)
    entries = list((tmp_path / "data" / "cache" / "blood_cells").iterdir())
    assert len(entries) == 3 and all(np.load(e / "images.npy").ndim == 4 for e in entries)
    adapter = Path(metrics["adapter_path"])
    with safe_open(str(adapter), "pt") as f:
        assert f.metadata()["color"] == "rgb"
    # The same adapter relabelled gray, to check that predict decodes per adapter.
    gray_adapter = tmp_path / "gray.safetensors"
    with safe_open(str(adapter), "pt") as f:
        save_file(load_file(str(adapter)), str(gray_adapter), metadata={**f.metadata(), "color": "gray"})

    images = [solid(tmp_path / "in" / "red.png", RED), solid(tmp_path / "in" / "blue.png", BLUE)]
    files, probs, _ = predict({"rgb": str(adapter), "gray": str(gray_adapter)}, [str(tmp_path / "in")])
    assert files == sorted(images)
    bank, backbone = build_bank([str(adapter)])
    bank.switch(next(iter(bank.adapters)))
    bank.model.eval()
    normalize = Normalize(backbone["mean"], backbone["std"])
    expected = {}
    with torch.no_grad():
        for color in ("rgb", "gray"):
            batch = torch.stack([normalize(read_image(p, backbone["img_size"], color)) for p in files])
            expected[color] = bank.model(batch).softmax(-1)
    assert not torch.allclose(expected["rgb"], expected["gray"], atol=1e-4)  # the mode matters here
    for color in ("rgb", "gray"):
        torch.testing.assert_close(probs[color], expected[color], atol=1e-5, rtol=1e-4)
