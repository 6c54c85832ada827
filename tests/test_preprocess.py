"""featcache's classification preset gives torchvision's ``ImageClassification`` tensors, bit for bit."""
from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from featcache.extraction.backbones.registry import IMAGENET, Preprocess
from featcache.extraction.preprocess import ClassificationPreset, resized_size


def torchvision_preset(p: Preprocess) -> ImageClassification:
    t = ImageClassification(crop_size=p.crop, resize_size=p.resize, mean=p.mean, std=p.std,
                            interpolation=InterpolationMode(p.interpolation), antialias=p.antialias)
    if p.crop_mode == "squash":
        t.resize_size = [p.resize, p.resize]
    return t


def image(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    assert torch.equal(a, b)


SIZES = [(500, 375), (375, 500), (224, 224), (256, 256), (257, 301), (31, 640), (640, 31), (1, 1), (299, 300)]


@pytest.mark.parametrize("w,h", SIZES)
@pytest.mark.parametrize("resize,crop", [(256, 224), (232, 224), (48, 48), (342, 299), (224, 224)])
def test_equals_torchvision_over_sizes(w, h, resize, crop):
    p = Preprocess(resize=resize, crop=crop, **IMAGENET)
    img = image(w, h, seed=w * h)
    same(p.build()(img), torchvision_preset(p)(img))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "nearest-exact", "box", "hamming",
                                           "lanczos"])
@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_equals_torchvision_over_interpolations_and_crop_modes(interpolation, crop_mode):
    p = Preprocess(resize=70, crop=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation=interpolation,
                   crop_mode=crop_mode)
    for w, h in ((120, 90), (90, 120), (64, 64)):
        img = image(w, h, seed=w)
        same(p.build()(img), torchvision_preset(p)(img))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "F", "1"])
def test_equals_torchvision_over_modes(mode):
    img = image(50, 45, mode)
    bands = len(img.getbands())
    p = Preprocess(resize=40, crop=32, mean=(0.5, 0.4, 0.3, 0.2)[:bands], std=(0.25, 0.2, 0.3, 0.1)[:bands])
    if mode in ("I;16", "F", "1"):  # not 8-bit bands: torchvision's own preset computes them
        assert p.build()(img).shape == torchvision_preset(p)(img).shape
        return
    same(p.build()(img), torchvision_preset(p)(img))


def test_crop_larger_than_the_image_pads_as_torchvision():
    p = Preprocess(resize=32, crop=40, **IMAGENET)
    img = image(50, 32)
    same(p.build()(img), torchvision_preset(p)(img))


def test_tensors_go_to_torchvision():
    p = Preprocess(resize=40, crop=32, **IMAGENET)
    t = torch.randint(0, 256, (3, 50, 60), dtype=torch.uint8)
    same(p.build()(t), torchvision_preset(p)(t))


def test_resized_size_follows_the_shorter_side():
    assert resized_size(375, 500, [256]) == (256, 341)
    assert resized_size(500, 375, [256]) == (341, 256)
    assert resized_size(375, 500, [64, 64]) == (64, 64)


def test_pickles_for_workers_without_torchvisions_preset():
    t = Preprocess(resize=40, crop=32, **IMAGENET).build()
    t(torch.zeros(3, 40, 40, dtype=torch.uint8))  # builds torchvision's preset inside
    back = pickle.loads(pickle.dumps(t))
    img = image(50, 45)
    same(back(img), t(img))
    assert back._torchvision is None


def test_unknown_interpolation_is_named():
    with pytest.raises(ValueError, match=r"interpolation 'cubic'.*bicubic"):
        ClassificationPreset(crop_size=8, resize_size=8, mean=(0,), std=(1,), interpolation="cubic")


def test_building_and_applying_it_imports_no_torchvision():
    code = ("import sys; from PIL import Image; from featcache.extraction.backbones.registry import Preprocess, "
            "IMAGENET; t = Preprocess(resize=40, crop=32, **IMAGENET).build(); t(Image.new('RGB', (50, 45))); "
            "print(sorted(m for m in sys.modules if m.startswith('torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
