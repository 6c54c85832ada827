"""The HDF5 feature store.

Layout under the store root (default ``cache/``)::

    digests.sqlite                      stat cache of file content digests
    results.jsonl                       results log of stage two
    features/<key>/identity.json        the FeatureIdentity (see keys.py)
    features/<key>/rows/<name>.h5       row shards: ``digests`` (N,) and ``features`` (N, D)
    features/<key>/rows/.tmp-*.h5       a shard being written (never read)
    features/<key>/views/<data>-<fingerprint>.h5   one contiguous file per dataset

Rows are keyed by the content digest of the image, under one identity, so
datasets that share images share rows. Row shards are append-only and
immutable once published: a writer fills a temporary file and publishes it
by ``os.replace`` every flush interval, so a killed run loses at most the rows
since the last flush, and several processes (or torchrun ranks) can write rows
into one identity at once without a lock, each into its own shards. Only
compaction and garbage collection take the identity's lock (``fcntl.flock``).
Views are written to a temporary name and renamed: published files are never
modified in place.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from featcache.store.digests import DigestCache
from featcache.errors import StoreError
from featcache.atomic import atomic_path, atomic_write_text
from featcache.faults import failpoint
from featcache.store.keys import FORMAT_VERSION, FeatureIdentity, canonical_json

STR = h5py.string_dtype("utf-8")
DIGEST_DTYPE = "S32"
BLOCK_BYTES = 64 << 20  # memory bound when copying rows
SHARD_BYTES = 64 << 20  # a shard is published at the latest when its features reach this size
VIEW_IN_MEMORY_BYTES = 512 << 20  # views up to this size are built in memory, then written


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEATCACHE_CACHE", "cache"))


def versions() -> dict:
    import platform

    from importlib.metadata import version
    import torch
    import torchvision

    from featcache._version import __version__

    return {"featcache": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "numpy": np.__version__,
            "scikit-learn": version("scikit-learn"), "python": platform.python_version()}


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

        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
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


def _read_rows(ds, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted, unique) of a 2-D dataset: one slice when they are dense, else a point selection."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo <= 4 * len(rows):
        return ds[lo:hi][rows - lo]
    return ds[rows]


class FeatureSet:
    """All rows and views of one feature identity."""

    def __init__(self, store: "FeatureStore", key: str, identity: FeatureIdentity):
        self.store, self.key, self.identity = store, key, identity
        self.dir = store.features_dir / key
        self.rows_dir = self.dir / "rows"
        self.views_dir = self.dir / "views"

    # -- locking
    @contextlib.contextmanager
    def lock(self, *, shared: bool = False, blocking: bool = True):
        """flock on the set's .lock file: shared while extracting or writing a view, exclusive
        for merging, pruning and gc. Yields whether it was taken (False: busy, non-blocking).
        On a store that cannot be written (read-only mount) only reading is possible, and
        reading needs no lock: it yields True."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fh = open(self.dir / ".lock", "a+")
        except OSError:
            if not shared:
                raise
            yield True
            return
        with fh:
            flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fh, flags)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- rows
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

    def writer(self, dim: int, **kw) -> ShardWriter:
        self.create()
        return ShardWriter(self.rows_dir, dim, self.identity.dtype, key=self.key, **kw)

    def create(self) -> None:
        """Write identity.json (atomically) if it is not there: the set exists from its first write on,
        so a run that fails before computing anything (bad layer, missing weights) leaves no empty set."""
        path = self.dir / "identity.json"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(self.identity.to_dict(), indent=2, sort_keys=True))

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
                out = np.empty((len(chunk), dim), dtype=self.identity.dtype)
                pos = np.array([index.where[d] for d in chunk], dtype=np.int64).reshape(-1, 2)
                for si in np.unique(pos[:, 0]):
                    sel = np.nonzero(pos[:, 0] == si)[0]
                    rows, inverse = np.unique(pos[sel, 1], return_inverse=True)
                    if si not in files:
                        files[si] = h5py.File(index.shards[si], "r")
                    out[sel] = _read_rows(files[si]["features"], rows)[inverse]
                yield start, out
        finally:
            for f in files.values():
                f.close()

    # -- views
    def view_path(self, data_name: str, fingerprint: str) -> Path:
        return self.views_dir / f"{data_name}-{fingerprint}.h5"

    def views(self) -> list[Path]:
        if not self.views_dir.is_dir():
            return []
        return sorted(p for p in self.views_dir.glob("*.h5") if not p.name.startswith("."))

    def write_view(self, path: Path, digests: list[str], *, ids: list[str], labels: np.ndarray,
                   split: list[str], class_names: list[str], attrs: dict) -> Path:
        """Materialise one contiguous view file (temporary name, then rename)."""
        self.create()
        with self.lock(shared=True):
            index = self.row_index()
            dim = self.dim() or 0

            def build(f):
                feats = f.create_dataset("features", shape=(len(digests), dim), dtype=self.identity.dtype)
                if digests:
                    for start, block in self.gather(digests, index):
                        feats[start:start + len(block)] = block
                f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
                f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR)
                f.create_dataset("digests", data=np.array(digests, dtype=DIGEST_DTYPE))
                f.create_dataset("split", data=np.array(split, dtype=object), dtype=STR)
                f.create_dataset("class_names", data=np.array(class_names, dtype=object), dtype=STR)
                f.attrs["feature_key"] = self.key
                f.attrs["identity"] = canonical_json(self.identity.to_dict())
                f.attrs["versions"] = json.dumps(versions())
                f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                f.attrs["format"] = FORMAT_VERSION
                for k, v in attrs.items():
                    f.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
                failpoint("view-publish")

            size = len(digests) * dim * np.dtype(self.identity.dtype).itemsize
            try:
                return write_hdf5_atomically(path, build, in_memory=size <= VIEW_IN_MEMORY_BYTES)
            except OSError as e:
                raise StoreError(f"cannot write the view {path} ({e}); the rows are kept: free disk space or "
                                 "fix permissions and re-run the same command") from None

    # -- maintenance
    def compact(self, *, min_shards: int = 16) -> int:
        """Merge small shards (under half of SHARD_BYTES) when there are at least ``min_shards``.

        Returns how many shards were merged. Duplicate rows (two writers computed the
        same image) are dropped. Takes the lock without waiting: a busy set is left
        for next time.
        """
        small = [p for p in self.shards() if p.stat().st_size < SHARD_BYTES // 2]
        if len(small) < min_shards:
            return 0
        with self.lock(blocking=False) as got:
            if not got:
                return 0
            small = [p for p in self.shards() if p.stat().st_size < SHARD_BYTES // 2]
            return self.rewrite(small, keep=None) if len(small) >= min_shards else 0

    def rewrite(self, shards: list[Path], keep: set[str] | None) -> int:
        """Replace ``shards`` by new ones holding their rows (those in ``keep`` if given); caller holds the lock."""
        index = self.row_index()
        chosen = set(map(str, shards))
        digests = [d for d, (si, _) in index.where.items()
                   if str(index.shards[si]) in chosen and (keep is None or d in keep)]
        w = ShardWriter(self.rows_dir, self.dim() or 1, self.identity.dtype, key=self.key,
                        flush_rows=1 << 62, flush_seconds=float("inf"))
        for start, block in (self.gather(digests, index) if digests else ()):
            w.append(digests[start:start + len(block)], block)
        w.flush()
        for p in shards:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        return len(shards)

    def info(self) -> dict:
        shards = self.shards()
        rows = 0
        for p in shards:
            with contextlib.suppress(OSError, KeyError), h5py.File(p, "r") as f:
                rows += int(f["digests"].shape[0])
        size = sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file())
        created = (self.dir / "identity.json").stat().st_mtime if (self.dir / "identity.json").exists() else None
        ident = self.identity.to_dict()
        return {
            "key": self.key, "backbone": ident["backbone"], "weights": ident["weights"],
            "layer": ident["layer"], "pool": ident["pool"], "dim": self.dim(), "dtype": ident["dtype"],
            "precision": ident["precision"], "image_size": ident["preprocess"]["crop"],
            "rows": rows, "shards": len(shards), "views": [str(v) for v in self.views()],
            "bytes": size, "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if created else None,
            "identity": ident, "path": str(self.dir),
        }


class FeatureStore:
    """A folder of feature sets, one per identity."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.features_dir = self.root / "features"

    @property
    def digest_cache(self) -> DigestCache:
        return DigestCache(self.root / "digests.sqlite")

    @property
    def results_log(self) -> Path:
        return self.root / "results.jsonl"

    def open(self, identity: FeatureIdentity) -> FeatureSet:
        """The feature set of ``identity``; a stored identity.json must match it. A new set is
        written to disk with its first rows or view (``FeatureSet.create``)."""
        key = identity.key
        fs = FeatureSet(self, key, identity)
        path = fs.dir / "identity.json"
        if path.exists():
            stored = self._read_identity(path)
            if canonical_json(stored.to_dict()) != canonical_json(identity.to_dict()):
                raise StoreError(f"{path} does not hold the identity of key {key} (edited by hand?); "
                                 "move the folder away and re-run to rebuild it")
        return fs

    def _read_identity(self, path: Path) -> FeatureIdentity:
        try:
            d = json.loads(path.read_text())
            ident = FeatureIdentity.from_dict(d)
        except (OSError, ValueError, TypeError) as e:
            raise StoreError(f"{path} is not a readable feature identity ({e}); move the folder away "
                             "and re-run the extraction to rebuild it") from None
        if ident.format != FORMAT_VERSION:
            raise StoreError(f"{path} has store format {ident.format}, this featcache reads format "
                             f"{FORMAT_VERSION}; re-extract into a new --cache folder")
        return ident

    def sets(self) -> list[FeatureSet]:
        """Every readable feature set. One whose identity cannot be read (damaged, or of another
        store format) is left out here, so the others stay usable; `cache verify` reports it."""
        if not self.features_dir.is_dir():
            return []
        out = []
        for d in sorted(self.features_dir.iterdir()):
            if (d / "identity.json").is_file():
                with contextlib.suppress(StoreError):
                    out.append(FeatureSet(self, d.name, self._read_identity(d / "identity.json")))
        return out

    def find(self, key: str) -> FeatureSet:
        """A feature set by full key or unique prefix."""
        sets = self.sets()
        exact = [s for s in sets if s.key == key]
        matches = exact or [s for s in sets if s.key.startswith(key)]
        if len(matches) == 1:
            return matches[0]
        from featcache.errors import UnknownNameError

        if not matches:
            raise UnknownNameError(f"feature key in {self.root}", key, [s.key for s in sets],
                                   hint="`featcache cache ls` lists them")
        raise StoreError(f"feature key prefix {key!r} is ambiguous: {', '.join(s.key for s in matches)}")
