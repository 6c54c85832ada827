"""Row shards: the immutable HDF5 files that hold one feature set's rows, keyed by content digest.

A writer buffers rows and publishes them as a new shard at every flush (temporary name,
then rename), so a killed run loses at most the rows since the last flush and several
processes can add rows to one set at once, each into its own shards. :class:`RowShards`
reads them back: the digest index, the features of given digests in order, and the
rewrite that merges (or prunes) shards.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featcache.atomic import atomic_path, hostname
from featcache.errors import StoreError
from featcache.faults import failpoint
from featcache.store.keys import FORMAT_VERSION

DIGEST_DTYPE = "S32"
BLOCK_BYTES = 64 << 20  # memory bound when copying rows
SHARD_BYTES = 64 << 20  # a shard is published at the latest when its features reach this size


def write_hdf5_atomically(path: Path, build, *, in_memory: bool = True) -> Path:
    """Write an HDF5 file under a temporary name, fsync, rename: readers see all of it or nothing.

    ``in_memory`` builds the file image in memory and writes it with plain file I/O,
    so a full disk or a file-size limit is a clean OSError (HDF5 itself is left in
    a state that crashes the interpreter at exit when a disk write fails under it).
    Large files (views beyond VIEW_IN_MEMORY_BYTES) are written by HDF5 through a Python
    file object, so a failed write is an OSError there too, not a broken HDF5 library.
    """
    with atomic_path(path, before_replace=lambda: failpoint("publish")) as tmp:
        if in_memory:
            buf = io.BytesIO()
            with h5py.File(buf, "w") as f:
                build(f)
            with open(tmp, "wb") as fh:
                fh.write(buf.getbuffer())
            del buf
        else:
            with open(tmp, "wb+") as fh, h5py.File(fh, "w") as f:
                build(f)
    return path


def shard_checksum(digests: np.ndarray, blocks) -> str:
    """BLAKE2b of a shard's digests and feature bytes (row-major), kept in its ``checksum``
    attribute: `cache verify` finds values edited inside an otherwise valid file."""
    h = hashlib.blake2b(np.ascontiguousarray(digests).tobytes(), digest_size=16)
    for block in blocks:
        h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()


class ShardWriter:
    """Buffers rows and publishes them as an immutable shard at every flush. One thread uses it.

    A flush happens every ``flush_rows`` rows, ``flush_seconds`` seconds or
    SHARD_BYTES of buffered features, whichever comes first, and on ``close``.
    A process killed at any moment loses at most the rows buffered since the
    last flush; what is published is complete.
    """

    def __init__(self, rows_dir: Path, dim: int, dtype: str, *, key: str,
                 flush_rows: int = 8192, flush_seconds: float = 60.0):
        self.rows_dir, self.dim, self.dtype, self.key = rows_dir, dim, dtype, key
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._digests: list[str] = []
        self._blocks: list[np.ndarray] = []
        self._n = 0
        self._started = time.monotonic()
        self.published: list[Path] = []
        self.rows_published = 0

    def append(self, digests: list[str], features: np.ndarray) -> None:
        if len(digests) == 0:
            return
        if features.shape != (len(digests), self.dim):
            raise StoreError(f"rows of shape {features.shape} do not fit this identity's dim {self.dim}")
        if self._n == 0:
            self._started = time.monotonic()
        self._digests.extend(digests)
        self._blocks.append(np.ascontiguousarray(features, dtype=self.dtype))
        self._n += len(digests)
        failpoint("shard-append")
        itemsize = np.dtype(self.dtype).itemsize
        if (self._n >= self.flush_rows or self._n * self.dim * itemsize >= SHARD_BYTES
                or time.monotonic() - self._started >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        """Publish the buffered rows as one shard (atomic rename); later rows go to a new one."""
        if self._n == 0:
            return
        digests = np.array(self._digests, dtype=DIGEST_DTYPE)
        feats = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
        n = self._n

        def build(f):
            f.create_dataset("digests", data=digests)
            f.create_dataset("features", data=feats)
            f.attrs.update(key=self.key, format=FORMAT_VERSION, rows=n, created=time.time(),
                           checksum=shard_checksum(digests, [feats]))

        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{hostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
        failpoint("shard-publish")
        final = write_hdf5_atomically(self.rows_dir / name, build)
        self._digests, self._blocks, self._n = [], [], 0
        self.published.append(final)
        self.rows_published += n
        failpoint("after-flush")

    def abort(self) -> None:
        """Drop the unpublished rows (used when a write failed)."""
        self._digests, self._blocks, self._n = [], [], 0


@dataclass
class RowIndex:
    """digest -> (shard number, row) over every published shard of one identity."""

    shards: list[Path]
    where: dict[str, tuple[int, int]]

    def __contains__(self, digest: str) -> bool:
        return digest in self.where

    def __len__(self) -> int:
        return len(self.where)


def read_rows(ds, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted, unique) of a 2-D dataset: one slice when they are dense, else a point selection."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo <= 4 * len(rows):
        return ds[lo:hi][rows - lo]
    return ds[rows]


class RowShards:
    """The row shards of one feature set (``rows_dir``), in the set's storage ``dtype``."""

    def __init__(self, rows_dir: Path, key: str, dtype: str):
        self.rows_dir, self.key, self.dtype = rows_dir, key, dtype

    def shards(self) -> list[Path]:
        if not self.rows_dir.is_dir():
            return []
        return sorted(p for p in self.rows_dir.glob("*.h5") if not p.name.startswith("."))

    def row_index(self) -> RowIndex:
        """Read every shard's digests; a shard removed meanwhile by compaction means: list again."""
        for _attempt in range(5):
            try:
                return self._row_index()
            except FileNotFoundError:
                continue
        return self._row_index()

    def _row_index(self) -> RowIndex:
        shards = self.shards()
        where: dict[str, tuple[int, int]] = {}
        for si, path in enumerate(shards):
            if not path.exists():
                raise FileNotFoundError(path)
            try:
                with h5py.File(path, "r") as f:
                    digests = f["digests"][:]
            except (OSError, KeyError) as e:
                if not path.exists():
                    raise FileNotFoundError(path) from None
                raise StoreError(
                    f"row shard {path} is unreadable ({e}); run `featcache cache verify` to list damaged "
                    "files and `featcache cache gc --repair` to drop them (their rows are re-extracted)"
                ) from None
            for ri, d in enumerate(digests.tolist()):
                where.setdefault(d.decode(), (si, ri))
        return RowIndex(shards, where)

    def dim(self) -> int | None:
        for path in self.shards():
            with contextlib.suppress(OSError, KeyError), h5py.File(path, "r") as f:
                return int(f["features"].shape[1])
        return None

    def gather(self, digests: list[str], index: RowIndex | None = None):
        """Yield (start, block) of features in the order of ``digests``, memory-bounded."""
        index = index or self.row_index()
        dim = self.dim()
        if dim is None:
            raise StoreError(f"feature set {self.key} has no rows")
        missing = [d for d in digests if d not in index]
        if missing:
            raise StoreError(f"{len(missing)} rows missing from {self.key} (first digest {missing[0]}): they were "
                             "removed meanwhile (`cache gc --repair` or by hand); re-run the same command to "
                             "compute them again")
        block = max(1, BLOCK_BYTES // (dim * 4))
        files: dict[int, h5py.File] = {}
        try:
            for start in range(0, len(digests), block):
                chunk = digests[start:start + block]
                out = np.empty((len(chunk), dim), dtype=self.dtype)
                pos = np.array([index.where[d] for d in chunk], dtype=np.int64).reshape(-1, 2)
                for si in np.unique(pos[:, 0]):
                    sel = np.nonzero(pos[:, 0] == si)[0]
                    rows, inverse = np.unique(pos[sel, 1], return_inverse=True)
                    if si not in files:
                        files[si] = h5py.File(index.shards[si], "r")
                    out[sel] = read_rows(files[si]["features"], rows)[inverse]
                yield start, out
        finally:
            for f in files.values():
                f.close()

    def rewrite(self, shards: list[Path], keep: set[str] | None) -> int:
        """Replace ``shards`` by new ones holding their rows (those in ``keep`` if given); caller holds the lock."""
        index = self.row_index()
        chosen = set(map(str, shards))
        digests = [d for d, (si, _) in index.where.items()
                   if str(index.shards[si]) in chosen and (keep is None or d in keep)]
        w = ShardWriter(self.rows_dir, self.dim() or 1, self.dtype, key=self.key,
                        flush_rows=1 << 62, flush_seconds=float("inf"))
        for start, block in (self.gather(digests, index) if digests else ()):
            w.append(digests[start:start + len(block)], block)
        w.flush()
        for p in shards:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        return len(shards)
