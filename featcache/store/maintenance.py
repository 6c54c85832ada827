"""Looking after the store: ``verify`` finds problems, ``gc`` removes what is safe to remove.

verify checks every file: identity.json readable and of this format, each row
shard opens with the expected datasets and the identity's dim and dtype, no
NaN/inf, row digests unique, each view complete and equal to the rows it was
built from, the files a set keeps beside its rows (an exported graph,
featcache.store.artifacts) matching their digests, and the resolution index
(``resolutions.sqlite``, see featcache.store.resolutions) readable and consistent with
weights files and identities. gc removes temporary files left by dead writers, merges shards
(dropping duplicate rows), optionally drops rows no view references
(``prune_rows``), and with ``repair`` moves damaged files away (damaged kept files, which are
derived, are removed) so that the next extraction recomputes what they held.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featcache.atomic import hostname
from featcache.errors import StoreError
from featcache.store import artifacts
from featcache.store.views import check_view
from featcache.store.featureset import FeatureSet, FeatureStore
from featcache.store.resolutions import check_index
from featcache.store.shards import BLOCK_BYTES, shard_checksum

TMP_GRACE_SECONDS = 24 * 3600  # a temp file of another host is only removed when this old


@dataclass
class Problem:
    path: str
    problem: str
    fix: str


@dataclass
class VerifyReport:
    checked_files: int = 0
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    temporary_files: list[str] = field(default_factory=list)
    # rows two writers both computed (concurrent runs of overlapping data): harmless, the
    # copies are equal; `cache gc` merges them
    duplicate_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def _blocks(ds):
    n, d = ds.shape
    step = max(1, BLOCK_BYTES // max(1, d * 4))
    return (ds[i:i + step] for i in range(0, n, step))


def _finite_in_blocks(ds) -> bool:
    return all(np.isfinite(b).all() for b in _blocks(ds))


def _tmp_files(fs: FeatureSet) -> list[Path]:
    out = []
    for d in (fs.rows_dir, fs.views_dir, fs.dir):
        if d.is_dir():
            out += [p for p in d.iterdir() if p.name.startswith(".tmp-")]
    return out


def verify(cache_dir=None, *, check_values: bool = True) -> VerifyReport:
    store = FeatureStore(cache_dir)
    rep = VerifyReport()
    rep.problems += [Problem(*p) for p in check_index(store.root)]
    if not store.features_dir.is_dir():
        return rep
    for d in sorted(store.features_dir.iterdir()):
        if not d.is_dir():
            continue
        if not (d / "identity.json").exists() and not any(d.rglob("*.h5")):
            continue  # a run took the lock, then failed before writing anything
        rep.checked_files += 1
        try:
            ident = store._read_identity(d / "identity.json")
        except StoreError as e:
            rep.problems.append(Problem(str(d / "identity.json"), str(e), "move the folder away; re-extract"))
            continue
        if ident.key != d.name:
            rep.problems.append(Problem(str(d / "identity.json"), f"identity hashes to {ident.key}, not {d.name}",
                                        "the file was edited: move the folder away and re-extract"))
            continue
        fs = FeatureSet(store, d.name, ident)
        rep.temporary_files += [str(p) for p in _tmp_files(fs)]
        rep.rows += _verify_rows(fs, rep, check_values)
        for v in fs.views():
            _verify_view(fs, v, rep, check_values)
        if check_values:
            _verify_kept_files(fs, rep)
    return rep


def _verify_kept_files(fs: FeatureSet, rep: VerifyReport) -> None:
    """The files a set keeps beside its rows (:mod:`featcache.store.artifacts`) match their digests."""
    for kind in artifacts.KINDS:
        for p in artifacts.damaged(fs.dir, kind):
            rep.problems.append(Problem(str(p), "damaged kept file: its bytes do not match the digest in its name",
                                        "`featcache cache gc --repair` removes it; the next extract makes it again"))


def _verify_rows(fs: FeatureSet, rep: VerifyReport, check_values: bool) -> int:
    seen: dict[bytes, str] = {}
    dims = set()
    rows = 0
    for p in fs.shards():
        rep.checked_files += 1
        try:
            with h5py.File(p, "r") as f:
                if "digests" not in f or "features" not in f:
                    raise StoreError("missing datasets 'digests' or 'features'")
                feats, digests = f["features"], f["digests"][:]
                if feats.ndim != 2 or feats.shape[0] != len(digests):
                    raise StoreError(f"features {feats.shape} do not match {len(digests)} digests")
                if str(feats.dtype) != fs.identity.dtype:
                    raise StoreError(f"dtype {feats.dtype}, the identity says {fs.identity.dtype}")
                dims.add(feats.shape[1])
                if check_values and not _finite_in_blocks(feats):
                    raise StoreError("features contain NaN or inf")
                stored = f.attrs.get("checksum")
                if check_values and stored is not None and shard_checksum(digests, _blocks(feats)) != stored:
                    raise StoreError("its values do not match its checksum (edited or corrupted)")
        except (OSError, StoreError, KeyError) as e:
            rep.problems.append(Problem(str(p), f"damaged row shard: {e}",
                                        "`featcache cache gc --repair` moves it away; its rows are re-extracted"))
            continue
        rep.duplicate_rows += sum(1 for x in digests.tolist() if x in seen)
        seen.update((x, p.name) for x in digests.tolist())
        rows += len(digests)
    if len(dims) > 1:
        rep.problems.append(Problem(str(fs.rows_dir), f"shards of different dims {sorted(dims)}",
                                    "move the folder away and re-extract"))
    return rows


def _verify_view(fs: FeatureSet, path: Path, rep: VerifyReport, check_values: bool) -> None:
    rep.checked_files += 1
    try:
        check_view(path)
        with h5py.File(path, "r") as f:
            if f.attrs.get("feature_key") != fs.key:
                raise StoreError(f"view says key {f.attrs.get('feature_key')}, lies under {fs.key}")
            digests = [d.decode() for d in f["digests"][:].tolist()]
            feats = f["features"]
            if check_values and len(digests):
                for start, block in fs.gather(digests):
                    if not np.array_equal(feats[start:start + len(block)], block):
                        raise StoreError(f"rows {start}..{start + len(block)} differ from the stored rows")
    except (OSError, StoreError, KeyError) as e:
        rep.problems.append(Problem(str(path), f"bad view: {e}",
                                    "`featcache cache gc --repair` removes it; the next extract rebuilds it"))


@dataclass
class GcReport:
    removed_temporary: list[str] = field(default_factory=list)
    merged_shards: int = 0
    pruned_rows: int = 0
    quarantined: list[str] = field(default_factory=list)
    removed_damaged: list[str] = field(default_factory=list)  # damaged kept files (an exported graph)
    freed_bytes: int = 0
    busy: list[str] = field(default_factory=list)  # keys left alone: an extraction holds them

    def to_dict(self) -> dict:
        return asdict(self)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(p: Path) -> bool:
    """A temp file whose writer is gone: same host and dead pid, or another host and old."""
    parts = p.name.split("-")
    try:
        host, pid = "-".join(parts[1:-2]), int(parts[-2])
    except (ValueError, IndexError):
        return time.time() - p.stat().st_mtime > TMP_GRACE_SECONDS
    if host == hostname():
        return not _pid_alive(pid)
    return time.time() - p.stat().st_mtime > TMP_GRACE_SECONDS


def gc(cache_dir=None, *, prune_rows: bool = False, repair: bool = False) -> GcReport:
    store = FeatureStore(cache_dir)
    rep = GcReport()
    if repair:
        for prob in verify(cache_dir).problems:
            p = Path(prob.path)
            if p.is_file() and p.suffix == ".h5" and ("damaged" in prob.problem or "bad view" in prob.problem):
                dest = p.with_name(f".damaged-{int(time.time())}-{p.name}")
                os.replace(p, dest)
                rep.quarantined.append(str(dest))
            elif p.is_file() and prob.problem.startswith("damaged kept file"):  # derived: made again when needed
                p.unlink()
                rep.removed_damaged.append(str(p))
    for fs in store.sets():
        with fs.lock(blocking=False) as got:
            if not got:  # an extraction is adding rows that no view references yet
                rep.busy.append(fs.key)
                continue
            for p in _tmp_files(fs):
                if p.name.startswith(".tmp-") and _stale(p):
                    rep.freed_bytes += p.stat().st_size
                    p.unlink()
                    rep.removed_temporary.append(str(p))
            if prune_rows:
                rep.pruned_rows += _prune(fs)
        rep.merged_shards += fs.compact(min_shards=2)
    return rep


def _prune(fs: FeatureSet) -> int:
    """Rewrite the rows keeping only those some view references; the caller holds the lock."""
    referenced: set[str] = set()
    for v in fs.views():
        with h5py.File(v, "r") as f:
            referenced.update(d.decode() for d in f["digests"][:].tolist())
    index = fs.row_index()
    dropped = sum(1 for d in index.where if d not in referenced)
    if dropped:
        fs.rewrite(index.shards, keep=referenced)
    return dropped
