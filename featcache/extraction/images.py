"""Decoding image files to tensors in DataLoader workers: rows, raw JPEGs, batches.

The torch-free part (file decoding to RGB, the file reader) is
:mod:`featcache.extraction.imagefiles`; its names are re-exported here.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import torch

from featcache.extraction.imagefiles import (  # re-exported: the decoding of files lives there
    IMAGE_EXTENSIONS,
    JPEG_MAGIC,
    FileReader,
    ImageTooLarge,
    check_pixels,
    decode_image,
    jpeg_bytes,
    to_rgb,
)

__all__ = ["IMAGE_EXTENSIONS", "JPEG_MAGIC", "Batch", "FileReader", "ImageRows", "ImageTooLarge", "RawJpeg",
           "batch_chunks", "check_pixels", "collate", "decode_image", "jpeg_bytes", "join_rows", "merge_chunks",
           "to_rgb"]


class RawJpeg:
    """Undecoded JPEG bytes travelling from a worker to the device decoder."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | torch.Tensor):
        self.data = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def pin_memory(self) -> "RawJpeg":  # called by the DataLoader's pin-memory thread
        return RawJpeg(self.data.pin_memory())


class ImageRows(torch.utils.data.Dataset):
    """Rows of a reader -> (position, tensor | RawJpeg | None, error | None, decode seconds), in workers.

    ``decode`` (``--decode``) applies to image files (a :class:`FileReader`): ``device`` passes
    plain JPEG files on undecoded, ``draft`` decodes JPEGs at a reduced scale no smaller
    than ``resize`` px; everything else is decoded and transformed here.
    """

    def __init__(self, reader, positions: list[int], transform, decode: str = "workers", resize: int | None = None):
        self.reader, self.positions, self.transform = reader, positions, transform
        files = isinstance(reader, FileReader)
        self.raw_jpeg = files and decode == "device"
        self.load_kw = {"draft": resize} if files and decode == "draft" else {}

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        t0 = time.perf_counter()
        pos = self.positions[i]
        try:
            data = self.reader.jpeg(pos) if self.raw_jpeg else None
            item = RawJpeg(data) if data is not None else self.transform(self.reader.load(pos, **self.load_kw))
            err = None
        except Exception as e:  # noqa: BLE001 - the policy decides; the error text travels
            item, err = None, f"{type(e).__name__}: {e}"
        return pos, item, err, time.perf_counter() - t0


class Batch(NamedTuple):
    positions: torch.Tensor  # rows of ``images``
    images: torch.Tensor | None  # decoded and transformed in workers
    bad: list  # (position, error)
    seconds: float  # decode seconds summed over workers
    jpegs: list  # (position, RawJpeg) left to decode on the device


def collate(items) -> Batch:
    """Batch of good images + list of (position, error) for the bad ones + raw JPEGs."""
    good = [(p, t) for p, t, e, _ in items if e is None and not isinstance(t, RawJpeg)]
    jpegs = [(p, t) for p, t, e, _ in items if isinstance(t, RawJpeg)]
    bad = [(p, e) for p, _, e, _ in items if e is not None]
    seconds = sum(s for *_, s in items)
    if good:
        positions = torch.tensor([p for p, _ in good], dtype=torch.int64)
        images = torch.stack([t for _, t in good])
    else:
        positions, images = torch.empty(0, dtype=torch.int64), None
    return Batch(positions, images, bad, seconds, jpegs)


def batch_chunks(rows: int, batch_size: int, parts: int) -> list[list[range]]:
    """Indexes ``0..rows-1`` in batches of ``batch_size``; the first batch and the last ``parts``
    are each cut into up to ``parts`` near-equal chunks (ranges), one per worker.

    Every worker then decodes a share of the batches a run waits on: the first (ready after
    1/parts of its decoding time) and the last ones, where whole batches left the other
    workers idle (64 photos of 12 MP at the default batch size of 64: one batch, decoded by
    one worker). The batches between stay whole: there the decoding runs ahead of the forward,
    and joining chunks would only cost a copy."""
    starts = range(0, rows, batch_size)
    out = []
    for i, start in enumerate(starts):
        size = min(batch_size, rows - start)
        k = min(parts, size) if i == 0 or i >= len(starts) - parts else 1
        bounds = [start + size * j // k for j in range(k + 1)]
        out.append([range(a, b) for a, b in zip(bounds, bounds[1:])])
    return out


def merge_chunks(chunks: list[Batch], device: torch.device | None = None) -> Batch:
    """The chunks of one batch, in order -> that batch, as :func:`collate` gives it from its items.

    The images are joined on ``device`` (CUDA: each pinned chunk is copied there on its own,
    then joined there)."""
    if len(chunks) == 1:
        return chunks[0]
    return Batch(torch.cat([c.positions for c in chunks]), join_rows([c.images for c in chunks], device),
                 [b for c in chunks for b in c.bad], sum(c.seconds for c in chunks),
                 [j for c in chunks for j in c.jpegs])


def join_rows(blocks, device: torch.device | None = None) -> torch.Tensor | None:
    """Blocks of image rows (``None``: a block without any) -> one tensor on ``device`` (each
    block copied there on its own, then joined there), or ``None`` when no block has rows."""
    parts = [b if device is None else b.to(device, non_blocking=True) for b in blocks if b is not None]
    return torch.cat(parts) if len(parts) > 1 else (parts[0] if parts else None)
