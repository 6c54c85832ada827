"""Reading dataset views: one contiguous HDF5 file per (identity, dataset).

A view holds ``features`` (N, D), ``labels`` (N,; -1 = unlabelled), ``ids``
(paths relative to the data root), ``digests``, ``split`` ("train"/"val"/"test"/""),
``class_names``, and attributes ``feature_key``, ``identity`` (JSON), ``versions``
(JSON), ``skipped`` (JSON list of unreadable files), ``created``. Plain h5py reads it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featcache.errors import StoreError
from featcache.store.keys import FORMAT_VERSION
from featcache.store.featureset import FeatureStore

REQUIRED = ("features", "labels", "ids", "split", "class_names")


@dataclass
class Features:
    features: np.ndarray
    labels: np.ndarray
    ids: list[str]
    split: np.ndarray
    class_names: list[str]
    feature_key: str
    identity: dict
    path: str
    attrs: dict = field(default_factory=dict)

    @property
    def X(self) -> np.ndarray:
        return self.features

    @property
    def y(self) -> np.ndarray:
        return self.labels


def _decode(a) -> list[str]:
    return [x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else str(x) for x in a]


def check_view(path: str | os.PathLike) -> None:
    """Raise StoreError when a view file is not a complete featcache view."""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED if k not in f]
            if missing or "feature_key" not in f.attrs:
                raise StoreError(f"{path} is not a featcache view (missing {', '.join(missing) or 'attributes'})")
            fmt = int(f.attrs.get("format", -1))
            if fmt != FORMAT_VERSION:
                raise StoreError(f"{path} has view format {fmt}; this featcache reads {FORMAT_VERSION}: "
                                 "`featcache cache gc --repair` moves it aside, then re-run `featcache extract` "
                                 "to rebuild it")
            n = f["features"].shape[0]
            for k in ("labels", "ids", "split"):
                if f[k].shape[0] != n:
                    raise StoreError(f"{path}: {k} has {f[k].shape[0]} rows, features {n}; the file was "
                                     "edited or damaged: delete it and re-run `featcache extract`")
    except OSError as e:
        raise StoreError(f"cannot read view {path} ({e}); delete it and re-run `featcache extract`") from None


def resolve_view(ref: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A view path from a file path, a feature key (or prefix) with one view, or ``KEY:DATA``."""
    p = Path(ref)
    if p.suffix == ".h5" or p.exists():
        if not p.is_file():
            raise StoreError(f"view file {str(p)!r} does not exist")
        return p
    key, _, data = str(ref).partition(":")
    fs = FeatureStore(cache_dir).find(key)
    by_name: dict[str, list[Path]] = {}
    for v in fs.views():
        by_name.setdefault(v.name.rsplit("-", 1)[0], []).append(v)
    names = ", ".join(f"{fs.key}:{n}" for n in sorted(by_name)) or "none"
    if data and data not in by_name:
        raise StoreError(f"feature set {fs.key} has no view of {data!r}; views: {names}. "
                         "Run `featcache extract` first")
    if not data and len(by_name) != 1:
        if not by_name:
            raise StoreError(f"feature set {fs.key} has no view; run `featcache extract` first")
        raise StoreError(f"feature set {fs.key} has views of {len(by_name)} data sets; name one as KEY:DATA "
                         f"({names}) or pass a path")
    # the newest view of that data set (a grown data set has one view per version)
    return max(by_name[data or next(iter(by_name))], key=lambda v: v.stat().st_mtime_ns)


def load_features(ref: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  mmap: bool = False) -> Features:
    """Read a view into numpy arrays (``mmap=True`` leaves ``features`` as an open h5py dataset)."""
    path = resolve_view(ref, cache_dir)
    check_view(path)
    f = h5py.File(path, "r")
    try:
        feats = f["features"] if mmap else f["features"][:]
        attrs = {k: f.attrs[k] for k in f.attrs}
        out = Features(
            features=feats,
            labels=f["labels"][:],
            ids=_decode(f["ids"][:]),
            split=np.array(_decode(f["split"][:]), dtype=object),
            class_names=_decode(f["class_names"][:]),
            feature_key=str(attrs["feature_key"]),
            identity=json.loads(attrs["identity"]),
            path=str(path),
            attrs={k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()},
        )
    finally:
        if not mmap:
            f.close()
    return out


def describe(ref: str, cache_dir: str | os.PathLike | None = None) -> dict:
    """What ``cache info`` shows: a feature set by key, or one view file by path."""
    p = Path(ref)
    if p.suffix == ".h5" or p.exists():
        f = load_features(p, mmap=True)
        try:
            n, d = f.features.shape
            return {
                "path": f.path, "feature_key": f.feature_key, "backbone": f.identity["backbone"],
                "layer": f.identity["layer"], "rows": n, "dim": d, "dtype": str(f.features.dtype),
                "classes": len(f.class_names), "labelled": int((f.labels >= 0).sum()),
                "splits": {s or "(none)": int((f.split == s).sum()) for s in sorted(set(f.split.tolist()))},
                "skipped": len(json.loads(f.attrs.get("skipped", "[]"))), "bytes": os.path.getsize(p),
                "created": f.attrs.get("created"), "data_source": f.attrs.get("data_source"),
                "identity": f.identity,
            }
        finally:
            f.features.file.close()
    return FeatureStore(cache_dir).find(str(ref)).info()
