"""The papers' preprocessing rules (src.data.transforms), each against an independent computation: MeLo's
torchvision resize of float tensors, MED-PEFT's DICOM x * 255 / max, its evaluation resize-shorter + centre
crop (straight PIL), its MRM RandomResizedCrop + flip (torchvision's functional ops with the same draws) and
its CXR-MAE timm RandAugment / random-erasing transform; the dataset and predict follow the options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import Resize
from torchvision.transforms import functional as TF

from src.data.base import Normalize
from src.data.cache import entry_name
from src.data.image_files import read_image
from src.data.image_folder import ImageFolderDataModule
from src.data.protocol_dataset import decoding_metadata, open_whole, predict_inputs
from src.data.transforms import Decode, dicom_max255, protocol_transform, resize_to
from src.errors import UserError
from src.predict import adapter_batches
from src.predict_inputs import decode_inputs
from tests.test_predict import write_dicom

MEAN, STD = [0.4785] * 3, [0.2834] * 3


def busy(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Fine detail (noise + thin stripes), where the resize kernels differ."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w)).astype(np.float64) * 0.5 + 120 * (np.arange(w) % 3 == 0)
    return img.clip(0, 255).astype(np.uint8)


def test_melo_tensor_resize_is_torchvision_on_float_tensors_without_antialiasing() -> None:
    u8 = busy(300, 260)
    ours = np.asarray(resize_to(Image.fromarray(u8), 64, "tensor"), dtype=np.int16)
    # MeLo: np.float32 / 255 -> tensor -> torchvision Resize([224, 224]) (torchvision 0.14: no antialias)
    ref = Resize([64, 64], antialias=False)(torch.from_numpy(u8).float().div(255)[None])[0]
    ref = ref.mul(255).round().numpy().astype(np.int16)
    assert np.abs(ours - ref).max() <= 1  # 8-bit rounding
    pil = np.asarray(Image.fromarray(u8).resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
    assert np.abs(pil - ref).mean() > 5  # the default (antialiased) rule is a different image


def test_decode_options_reach_files_and_cache_keys(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(busy(120, 100)).save(path)
    tensor = read_image(path, 32, "gray", decode=Decode(resize="tensor"))
    assert torch.equal(tensor, torch.from_numpy(np.asarray(resize_to(Image.open(path), 32, "tensor"))))
    assert not torch.equal(tensor, read_image(path, 32, "gray"))
    keys = {
        entry_name([path], "train", 32, "gray", decode=d)[0]
        for d in (Decode(), Decode("tensor"), Decode("pil", "max255"))
    }
    assert len(keys) == 3 and entry_name([path], "train", 32, "gray")[0] in keys
    with pytest.raises(UserError, match=r"dataset\.resize='bicubic'"):
        Decode(resize="bicubic")


def test_medpeft_dicom_rule_is_255_over_max(tmp_path: Path) -> None:
    pixels = (500 + np.arange(16 * 16).reshape(16, 16) * 7 % 3001).astype(np.uint16)  # min > 0
    expected = (pixels.astype(np.float64) * 255 / pixels.max()).astype(np.uint8)  # MED-PEFT, then 8 bits
    np.testing.assert_array_equal(dicom_max255(pixels, "MONOCHROME2"), expected)
    np.testing.assert_array_equal(dicom_max255(pixels, "MONOCHROME1"), 255 - expected)
    dcm = write_dicom(tmp_path / "a.dcm", pixels)
    decoded = read_image(dcm, 16, "gray", decode=Decode(dicom_intensity="max255"))
    np.testing.assert_array_equal(decoded.numpy(), expected)  # same size: no resampling
    assert not torch.equal(decoded, read_image(dcm, 16, "gray"))  # our window / range rule differs


@pytest.mark.parametrize(("protocol", "resize"), [("medpeft_mrm", 224), ("medpeft_cxr_mae", 256)])
def test_medpeft_eval_resizes_the_shorter_side_bicubic_then_centre_crops(protocol: str, resize: int) -> None:
    img = Image.fromarray(busy(300, 400)).convert("RGB")
    out = protocol_transform(protocol, "test", 224, MEAN, STD)(img)
    w = int(400 * resize / 300)  # torchvision's documented rule for the longer side: truncated
    ref = img.resize((w, resize), Image.Resampling.BICUBIC)
    left, top = round((w - 224) / 2), round((resize - 224) / 2)
    ref = np.asarray(ref.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    ref = (torch.from_numpy(ref).permute(2, 0, 1) - MEAN[0]) / STD[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_mrm_training_is_random_resized_crop_bicubic_and_flip() -> None:
    img = Image.fromarray(busy(200, 240)).convert("RGB")
    transform = protocol_transform("medpeft_mrm", "train", 64, MEAN, STD)
    for seed in range(3):
        torch.manual_seed(seed)
        out = transform(img)
        torch.manual_seed(seed)  # the same draws, by hand: crop box (scale 0.08-1, ratio 3/4-4/3), then flip
        scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
        area = 200 * 240
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*scale).item()
            log_ratio = torch.log(torch.tensor(ratio))
            aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
            if 0 < w <= 240 and 0 < h <= 200:
                i = torch.randint(0, 200 - h + 1, size=(1,)).item()
                j = torch.randint(0, 240 - w + 1, size=(1,)).item()
                break
        ref = img.crop((j, i, j + w, i + h)).resize((64, 64), Image.Resampling.BICUBIC)
        if torch.rand(1) < 0.5:
            ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        ref = (TF.to_tensor(ref) - MEAN[0]) / STD[0]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_cxr_mae_training_is_timm_randaugment_with_random_erasing() -> None:
    transform = protocol_transform("medpeft_cxr_mae", "train", 64, MEAN, STD)
    text = repr(transform)
    assert "RandomResizedCropAndInterpolation" in text and "bicubic" in text
    ops = transform.transforms[2]  # timm: crop, flip, RandAugment, ToTensor, Normalize, RandomErasing
    assert type(ops).__name__ == "RandAugment" and ops.num_layers == 2
    assert {op.magnitude for op in ops.ops} == {9} and ops.ops[0].magnitude_std == 0.5
    assert "PosterizeIncreasing" in {op.name for op in ops.ops}  # 'inc1': the increasing-severity op set
    erasing = transform.transforms[-1]
    assert type(erasing).__name__ == "RandomErasing" and erasing.probability == 0.25
    assert transform(Image.fromarray(busy(80, 90)).convert("RGB")).shape == (3, 64, 64)


def test_datamodule_and_adapter_follow_the_protocol(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(busy(48, 60, seed=i)).save(tmp_path / cls / f"{i}.png")
    dm = ImageFolderDataModule(
        name="t", root=str(tmp_path), image_size=32, mean=MEAN, std=STD, protocol="medpeft_cxr_mae",
        split_fractions=[0.6, 0.2, 0.2], cache=False,
    )  # fmt: skip
    dm.setup("test")
    image, _ = dm.datasets["test"][0]
    expected = protocol_transform("medpeft_cxr_mae", "test", 32, MEAN, STD)(
        open_whole(dm.splits["test"].paths[0], "gray", Decode())
    )
    torch.testing.assert_close(image, expected)
    assert decoding_metadata(dm) == {
        "resize": "pil",
        "dicom_intensity": "window",
        "protocol": "medpeft_cxr_mae",
    }


def test_predict_decodes_as_the_adapter_was_trained(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(busy(50, 70)).save(path)
    protocol = predict_inputs([path], {"protocol": "medpeft_mrm"}, 32, MEAN, STD)(0, 1)[0]
    reference = protocol_transform("medpeft_mrm", "test", 32, MEAN, STD)(Image.open(path).convert("RGB"))
    torch.testing.assert_close(protocol, reference)
    mode, backbone = ("gray", Decode(resize="tensor")), {"img_size": 32, "mean": MEAN, "std": STD}
    decoded = decode_inputs([path], 32, [mode])
    melo = adapter_batches(decoded, mode, {"resize": "tensor"}, backbone, Normalize(MEAN, STD))(0, 1)[0]
    pixels = torch.from_numpy(np.asarray(resize_to(Image.open(path), 32, "tensor"))).float() / 255
    torch.testing.assert_close(melo, ((pixels - MEAN[0]) / STD[0]).expand(3, -1, -1))
