"""``--decode device``: JPEG files decoded and preprocessed on the extraction device.

Workers read the bytes and parse only the header (:func:`featcache.extraction.imagefiles.jpeg_bytes`);
the main thread decodes a batch at once with ``torchvision.io.decode_jpeg`` (nvJPEG on
CUDA, libjpeg on CPU) and applies the same resize / crop / normalise as the worker
path, on tensors. Pixels differ slightly from PIL's (IDCT and resize rounding), so the
mode is part of the feature key (``keys.DECODERS``). A JPEG the device decoder
rejects is decoded by PIL from the same bytes, so it gets no worse treatment than on
the worker path.
"""
from __future__ import annotations

import io
import warnings

import torch

from featcache.extraction.imagefiles import decode_image
from featcache.extraction.images import RawJpeg


def _decode_all(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its image codecs as moving to TorchCodec
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return out if isinstance(out, list) else [out]


def _decode_with_pil(data: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(decode_image(io.BytesIO(data.numpy().tobytes())))


def decode_jpegs(jpegs: list[tuple[int, RawJpeg]], transform, device: torch.device):
    """-> (positions, images on ``device`` | None, [(position, error)]) for raw JPEG rows."""
    data = [j.data for _, j in jpegs]
    try:
        decoded: list[torch.Tensor | None] = list(_decode_all(data, device))
    except RuntimeError:  # one bad file fails the whole batched call: retry one by one
        decoded = []
        for d in data:
            try:
                decoded.append(_decode_all([d], device)[0])
            except RuntimeError:
                decoded.append(None)
    positions, images, bad = [], [], []
    for (pos, _), d, img in zip(jpegs, data, decoded):
        try:
            if img is None:
                img = _decode_with_pil(d).to(device)
            images.append(transform(img))
            positions.append(pos)
        except Exception as e:  # noqa: BLE001 - the on-error policy decides, as for worker decoding
            bad.append((pos, f"{type(e).__name__}: {e}"))
    if not images:
        return torch.empty(0, dtype=torch.int64), None, bad
    return torch.tensor(positions, dtype=torch.int64), torch.stack(images), bad
