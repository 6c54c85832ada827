"""The classification preset, on PIL images without importing torchvision.

:class:`ClassificationPreset` computes what torchvision's
``transforms._presets.ImageClassification`` computes (resize the shorter side or both
sides, centre-crop, scale to [0, 1], normalise), with the same calls in the same order, so
the tensors are bit-identical (``tests/test_preprocess.py`` checks them against torchvision
over sizes, modes, interpolations and crop modes). The point is the import: ``import
torchvision`` loads every submodule (models, ops and with them ``torch._dynamo``), 2-3 s
per process on a 2-core machine, which a run computing rows with a kept graph (a grown
dataset, a resumed run) does not otherwise need, nor do the decoding workers.

Inputs this module does not reproduce (tensors, e.g. from ``--decode device``; a crop
larger than the resized image, which torchvision pads) go to torchvision's own preset.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

#: torchvision's ``InterpolationMode`` values -> Pillow's resampling filters
#: (``torchvision.transforms.functional.pil_modes_mapping``)
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
#: PIL modes of 8-bit bands (featcache's decoders give RGB); others go to torchvision's preset
UINT8_MODES = frozenset({"L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"})


def resized_size(height: int, width: int, size: list[int]) -> tuple[int, int]:
    """(height, width) after resizing to ``size``: ``[short side]`` keeps the aspect ratio, ``[h, w]`` sets
    both (``torchvision.transforms.functional._compute_resized_output_size`` without ``max_size``)."""
    if len(size) == 2:
        return size[0], size[1]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size[0], int(size[0] * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


class ClassificationPreset:
    """PIL image -> normalised float32 CHW tensor, as torchvision's ``ImageClassification`` computes it."""

    def __init__(self, *, crop_size: int, resize_size: int | list[int], mean: tuple[float, ...],
                 std: tuple[float, ...], interpolation: str = "bilinear", antialias: bool = True):
        if interpolation not in PIL_FILTERS:
            raise ValueError(f"interpolation {interpolation!r}: expected one of {sorted(PIL_FILTERS)}")
        self.crop_size = [int(crop_size)]
        self.resize_size = [int(s) for s in resize_size] if isinstance(resize_size, (list, tuple)) \
            else [int(resize_size)]
        self.mean, self.std = list(mean), list(std)
        self.interpolation, self.antialias = interpolation, antialias
        self._torchvision = None

    def __call__(self, img) -> torch.Tensor:
        if not isinstance(img, Image.Image) or img.mode not in UINT8_MODES:
            return self.torchvision()(img)
        h, w = resized_size(img.height, img.width, self.resize_size)
        crop = self.crop_size[0]
        if crop > h or crop > w:
            return self.torchvision()(img)  # torchvision pads the resized image first
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), PIL_FILTERS[self.interpolation])
        top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        if (crop, crop) != (h, w):
            img = img.crop((left, top, left + crop, top + crop))
        return self.normalise(self.to_tensor(img))

    @staticmethod
    def to_tensor(img: Image.Image) -> torch.Tensor:
        """uint8 CHW (``torchvision.transforms.functional.pil_to_tensor``)."""
        t = torch.as_tensor(np.array(img, copy=True))
        return t.view(img.size[1], img.size[0], len(img.getbands())).permute((2, 0, 1))

    def normalise(self, t: torch.Tensor) -> torch.Tensor:
        """To float32 in [0, 1], then (x - mean) / std (``convert_image_dtype`` and ``normalize``)."""
        t = t.to(torch.float) / 255.0
        mean = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
        return t.sub_(mean).div_(std)

    def torchvision(self):
        """torchvision's own preset with these settings (imports torchvision)."""
        if self._torchvision is None:
            # torchvision: only for the inputs this preset does not reproduce
            from torchvision.transforms import InterpolationMode
            from torchvision.transforms._presets import ImageClassification

            self._torchvision = ImageClassification(
                crop_size=self.crop_size[0], resize_size=self.resize_size[0], mean=tuple(self.mean),
                std=tuple(self.std), interpolation=InterpolationMode(self.interpolation), antialias=self.antialias)
            self._torchvision.resize_size = list(self.resize_size)
        return self._torchvision

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_torchvision": None}  # workers rebuild torchvision's preset if they need it

    def __repr__(self) -> str:
        return (f"ClassificationPreset(crop_size={self.crop_size}, resize_size={self.resize_size}, mean={self.mean}, "
                f"std={self.std}, interpolation={self.interpolation!r})")
