"""Image files to 8-bit RGB PIL images, and the reader of image-file manifests; no torch.

Every mode ends as 8-bit RGB: transparency (RGBA, LA, palette with a
transparent index) is composited on white, grayscale and palette are expanded,
16/32-bit images are scaled to 8 bits, CMYK is converted, EXIF orientation is
applied, animated images use their first frame. A change here changes the
features, so it bumps ``decoders.DECODER_VERSION``.

Kept free of torch so that building a manifest (and a cache hit) does not import it;
the DataLoader side lives in :mod:`featcache.extraction.images`.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .png .bmp .gif .webp .tif .tiff .ppm .pgm .pbm .pnm .jfif".split()
)


def _to_8bit(img: Image.Image) -> Image.Image:
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return Image.fromarray(a)
    a = a.astype(np.float64)
    hi = 65535.0 if a.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
    if img.mode in ("F",):
        lo, hi = float(a.min(initial=0)), float(a.max(initial=1))
        a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    else:
        a = a / hi * 255.0
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, transparency composited on white."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette-with-transparency notices
        img = ImageOps.exif_transpose(img)
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            img = _to_8bit(img)
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode in ("L", "RGB") and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        if img.mode != "RGB":
            img = img.convert("RGB")
        return img


class ImageTooLarge(ValueError):
    pass


def check_pixels(w: int, h: int, max_pixels: int | None = None) -> None:
    """Refuse an image above ``max_pixels`` (default Pillow's bomb limit) before decoding it."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit and w * h > limit:
        raise ImageTooLarge(f"image of {w}x{h} = {w * h / 1e6:.0f} megapixels is above the "
                            f"{limit / 1e6:.0f}-megapixel limit; downscale it first")


def decode_image(path: str | io.BytesIO, max_pixels: int | None = None, draft: int | None = None) -> Image.Image:
    """Open (a path, or bytes in a BytesIO), decode fully and convert; raises on anything unreadable.

    Images above ``max_pixels`` (default Pillow's decompression-bomb limit,
    about 89 megapixels) are refused before decoding, so one huge file cannot
    exhaust a worker's memory. With ``draft=S`` a JPEG is decoded at the smallest
    DCT scale (1/2, 1/4, 1/8) that keeps its shorter side at S px or more: a large
    photo bound for a small input decodes several times faster, with slightly
    different pixels (``--decode draft``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageTooLarge(f"image too large to decode safely ({e})") from None
    with img:
        w, h = img.size
        check_pixels(w, h, max_pixels)
        img.seek(0)  # first frame of animated images
        if draft and img.format == "JPEG":
            short = min(w, h)
            img.draft(None, (max(1, w * draft // short), max(1, h * draft // short)))
        img.load()
        return to_rgb(img)


JPEG_MAGIC = b"\xff\xd8\xff"


def jpeg_bytes(path: str, max_pixels: int | None = None) -> bytes | None:
    """The file's bytes if it is a JPEG the tensor decoder takes (RGB or grayscale), else None.

    Only the header is parsed here (no pixel decoding); images above the pixel limit
    are refused as in :func:`decode_image`. CMYK/YCCK JPEGs and JPEGs with an EXIF
    rotation (nvJPEG does not apply it) return None and are decoded by PIL instead.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(JPEG_MAGIC):
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h, mode = img.width, img.height, img.mode
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken header: let PIL's decode_image report it
        return None
    check_pixels(w, h, max_pixels)
    return data if mode in ("RGB", "L") and orientation == 1 else None


class FileReader:
    """Reads rows of a manifest from image files (the default reader)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def load(self, i: int, draft: int | None = None) -> Image.Image:
        return decode_image(self.paths[i], draft=draft)

    def jpeg(self, i: int) -> bytes | None:
        """Undecoded bytes of row i when it is a plain JPEG (for decoding on the device)."""
        return jpeg_bytes(self.paths[i])

    def digests(self, digest_cache) -> list[str | None]:
        return digest_cache.digests(self.paths)
