"""Photo-sized JPEG test images, generated offline.

No photographs can be downloaded here, so each image is built to cost what a photo costs
to decode: a smooth random colour field (a few random colours, bicubically upscaled: sky,
walls, shading) with film-grain noise (sigma 6 grey levels) and 1-3 clip-art drawings from
the Debian package openclipart-png (/usr/share/openclipart/png) pasted at random places
and sizes, encoded as baseline JPEG, quality 90, 4:2:0 chroma subsampling (what cameras
and phones write). A 500x375 file is ~60-90 KB and a 4000x3000 (12-megapixel) file
~3-5 MB, in the range of real photos of those sizes; JPEG decode time depends on the
pixel count and the entropy-coded size, not on what the picture shows. Without the
clip-art package the images are the colour field and noise alone.

Image ``i`` depends only on (seed, i, size), so pools are rebuilt identically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

import _bench  # benchmarks/ is on sys.path for every script that imports this module

CLIPART = Path("/usr/share/openclipart/png")
N_CLASSES = 4


def _clipart_files(limit: int = 400) -> list[Path]:
    if not CLIPART.is_dir():
        return []
    files = sorted(p for p in CLIPART.rglob("*.png") if p.stat().st_size > 20_000)
    return files[:: max(1, len(files) // limit)]


def photo(i: int, width: int, height: int, seed: int = 0, clipart: list[Path] | None = None) -> Image.Image:
    rng = np.random.default_rng([seed, i, width, height])
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
    base = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    base += rng.normal(0.0, 6.0, (height, width, 1)).astype(np.float32)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    for k in range(int(rng.integers(1, 4)) if clipart else 0):
        with Image.open(clipart[int(rng.integers(len(clipart)))]) as art:
            art = art.convert("RGBA")
            scale = float(rng.uniform(0.25, 0.6)) * min(width, height) / max(art.size)
            art = art.resize((max(1, int(art.width * scale)), max(1, int(art.height * scale))),
                             Image.Resampling.BILINEAR)
            x, y = int(rng.integers(0, max(1, width - art.width))), int(rng.integers(0, max(1, height - art.height)))
            img.paste(art, (x, y), art)
    return img


def photo_pool(n: int, width: int, height: int, *, data_dir: str | os.PathLike, seed: int = 0,
               quality: int = 90) -> Path:
    """A folder of ``n`` photo-like JPEG files (``class_k/img_i.jpg``), built once and reused."""
    dest = Path(data_dir) / f"photos-{width}x{height}-q{quality}-seed{seed}-n{n}"

    def fill(tmp: Path) -> dict:
        art = _clipart_files()
        for i in range(n):
            path = tmp / f"class_{i % N_CLASSES}" / f"img_{i:06d}.jpg"
            path.parent.mkdir(exist_ok=True)
            photo(i, width, height, seed, art).save(path, format="JPEG", quality=quality, subsampling=2)
        return {"n": n, "size": [width, height], "seed": seed, "clipart": bool(art)}

    return _bench.folder_built_once(dest, fill)
