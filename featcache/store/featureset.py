"""The HDF5 feature store: feature sets (one per identity) with their views; the rows are in shards.py.

Layout under the store root (default ``cache/``)::

    digests.sqlite                      stat cache of file content digests
    results.jsonl                       results log of stage two
    features/<key>/identity.json        the FeatureIdentity (see keys.py)
    features/<key>/compute.json         the inference levers of its rows (extraction/levers.py)
    features/<key>/onnxruntime-<digest>.onnx   the exported graph of that lever (artifacts.py)
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
import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from featcache.atomic import atomic_write_text
from featcache.environment import versions
from featcache.errors import StoreError, UnknownNameError
from featcache.faults import failpoint
from featcache.store.digests import DigestCache
from featcache.store.layout import results_log, store_root
from featcache.store.keys import FORMAT_VERSION, FeatureIdentity, canonical_json
from featcache.store.resolutions import Resolution, ResolutionIndex
from featcache.store.shards import DIGEST_DTYPE, SHARD_BYTES, RowShards, ShardWriter, write_hdf5_atomically

STR = h5py.string_dtype("utf-8")
VIEW_IN_MEMORY_BYTES = 512 << 20  # views up to this size are built in memory, then written


class FeatureSet(RowShards):
    """One feature identity: its rows (:class:`RowShards`), its lock, its views."""

    def __init__(self, store: "FeatureStore", key: str, identity: FeatureIdentity):
        self.store, self.identity = store, identity
        self.dir = store.features_dir / key
        super().__init__(self.dir / "rows", key, identity.dtype)
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

    # -- rows: see RowShards
    def writer(self, dim: int, **kw) -> ShardWriter:
        self.create()
        return ShardWriter(self.rows_dir, dim, self.dtype, key=self.key, **kw)

    def create(self) -> None:
        """Write identity.json (atomically) if it is not there: the set exists from its first write on,
        so a run that fails before computing anything (bad layer, missing weights) leaves no empty set."""
        path = self.dir / "identity.json"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(self.identity.to_dict(), indent=2, sort_keys=True))

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
                feats = f.create_dataset("features", shape=(len(digests), dim), dtype=self.dtype)
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

            size = len(digests) * dim * np.dtype(self.dtype).itemsize
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
        self.root = store_root(root)
        self.features_dir = self.root / "features"

    @property
    def digest_cache(self) -> DigestCache:
        return DigestCache(self.root / "digests.sqlite")

    @property
    def results_log(self) -> Path:
        return results_log(self.root)

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

    def open_key(self, key: str) -> FeatureSet | None:
        """The set stored under ``key``, its identity read from disk; None when there is none, or when
        its identity is unreadable or does not hash to ``key`` (the full path then reports it)."""
        path = self.features_dir / key / "identity.json"
        if not path.is_file():
            return None
        try:
            ident = self._read_identity(path)
        except StoreError:
            return None
        return FeatureSet(self, key, ident) if ident.key == key else None

    def open_resolved(self, index: ResolutionIndex, request: dict) -> tuple[FeatureSet, Resolution] | None:
        """The set the resolution ``index`` resolves ``request`` to, with that resolution, when this
        store holds it; else None."""
        res = index.lookup(request)
        fs = self.open_key(res.key) if res is not None else None
        return (fs, res) if fs is not None else None

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

    def info(self) -> list[dict]:
        """:meth:`FeatureSet.info` of every readable feature set."""
        return [fs.info() for fs in self.sets()]

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
        if not matches:
            hint = (f"`featcache cache ls --cache {self.root}` lists them" if sets else
                    f"the store {self.root} holds no feature sets yet: run `featcache extract` first, "
                    "or pass the --cache that holds them")
            raise UnknownNameError("feature key", key, [s.key for s in sets], hint=hint)
        raise StoreError(f"feature key prefix {key!r} is ambiguous: {', '.join(s.key for s in matches)}")
