"""Files a feature set keeps beside its rows, derived from its model and named by their digest.

The ``onnxruntime`` lever exports the feature extractor to an ONNX graph, and the ``freeze``
lever traces and freezes it into a TorchScript graph; the graph is kept in the set's folder
(``features/<key>/onnxruntime-<digest>.onnx``, ``frozen-<digest>.pt``) so that every later run
into the set (a resumed, grown or torchrun job) loads it instead of building the model and
making the graph again, and computes its rows with the very graph the earlier rows came from.
The folder is keyed by the model's identity, so the file needs no key of its own.

The name carries the SHA-256 digest of the bytes (128 bits, hex): a reader checks it, so a
damaged file is never used; ``cache verify`` reports one and ``cache gc --repair`` removes
it, and the next run makes it again. SHA-256 rather than the store's BLAKE2b because the
CPU's SHA instructions hash it 2.4x faster (100 MB: 0.077 s against 0.185 s on the 2-core
AMD EPYC), and a graph is hashed on every run that loads it. Files are published
atomically (:mod:`featcache.atomic`) but not fsynced: a crash can only leave a file whose
digest fails, which is made again.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import NamedTuple

from featcache.atomic import atomic_path
from featcache.store.digests import hash_file


class Kind(NamedTuple):
    """A kind of file: ``<prefix>-<digest><suffix>``; ``what`` it is and how a run ``remakes`` it, for messages."""

    prefix: str
    suffix: str
    what: str
    remakes: str  # e.g. "exports the model again"


#: The feature extractor exported by the ``onnxruntime`` lever (featcache.extraction.onnx_forward).
ONNX_GRAPH = Kind("onnxruntime", ".onnx", "the exported graph", "exports the model again")
#: The feature extractor traced and frozen by the ``freeze`` lever (featcache.extraction.levers), not yet
#: optimised for inference (an optimised graph holds oneDNN constants that TorchScript cannot load back).
FROZEN_GRAPH = Kind("frozen", ".pt", "the frozen graph", "freezes the model again")
#: Every kind a feature set may keep (what ``cache verify`` checks).
KINDS = (ONNX_GRAPH, FROZEN_GRAPH)


def _named(folder: Path, kind: Kind) -> list[Path]:
    """The published files of ``kind`` in ``folder`` (temporary files start with a dot)."""
    return sorted(p for p in Path(folder).glob(f"{kind.prefix}-*{kind.suffix}") if not p.name.startswith("."))


DIGEST_HEX = 32  # the first 128 bits of the SHA-256


def _digest(data: bytes) -> str:
    """SHA-256 of ``data``, the first 128 bits in hex."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_HEX]


def _digest_in_name(path: Path) -> str:
    return path.name[:-len(path.suffix)].rsplit("-", 1)[-1]


def save(folder: str | os.PathLike, kind: Kind, data: bytes) -> Path:
    """Publish ``data`` as ``<folder>/<prefix>-<digest><suffix>``; returns its path. A file of that
    name is replaced (the same bytes, or a damaged copy of them)."""
    path = Path(folder) / f"{kind.prefix}-{_digest(data)}{kind.suffix}"
    with atomic_path(path, fsync=False) as tmp:  # not fsynced: a reader checks the digest anyway
        tmp.write_bytes(data)
    return path


def _intact(path: Path) -> bytes | None:
    """The file's bytes when they match the digest in its name, else None (also when unreadable)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if _digest(data) == _digest_in_name(path) else None


def load(folder: str | os.PathLike, kind: Kind) -> tuple[bytes | None, list[Path]]:
    """(the bytes of the first intact file of ``kind``, or None; the damaged files passed over)."""
    passed = []
    for path in _named(Path(folder), kind):
        data = _intact(path)
        if data is not None:
            return data, passed
        passed.append(path)
    return None, passed


def kept(folder: str | os.PathLike, kind: Kind) -> bytes | None:
    """The file of ``kind`` an earlier run kept in a feature set's ``folder`` (:func:`keep`), or None. A
    damaged one is passed over with a warning: the run makes it again and replaces it."""
    data, passed = load(folder, kind)
    for path in passed:
        warnings.warn(f"{kind.what} {path} is damaged (its bytes do not match the digest in its name); this run "
                      f"{kind.remakes}", RuntimeWarning, stacklevel=2)
    return data


def keep(folder: str | os.PathLike, kind: Kind, data: bytes) -> None:
    """Keep ``data`` in a feature set's ``folder`` for the later runs into the set, in place of any
    damaged file of its kind (a file's bytes need not be the same when it is made again: TorchScript
    files carry a serialisation id); nothing is written when an intact one is there already (kept
    meanwhile by another process, e.g. another torchrun rank). Failing to write it only costs the
    next run the work of making it again."""
    try:
        existing = _named(Path(folder), kind)
        if any(not _damaged(p) for p in existing):
            return
        path = save(folder, kind, data)
        for old in existing:
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as e:
        warnings.warn(f"could not keep {kind.what} in {folder} ({e}); the next run into this feature set "
                      f"{kind.remakes}", RuntimeWarning, stacklevel=2)


def _damaged(path: Path) -> bool:
    """Whether the file's bytes do not match the digest in its name (or cannot be read), hashed
    in chunks (:func:`featcache.store.digests.hash_file`) without holding the file in memory."""
    try:
        return hash_file(path, "sha256")[:DIGEST_HEX] != _digest_in_name(path)
    except OSError:
        return True


def damaged(folder: str | os.PathLike, kind: Kind) -> list[Path]:
    """The files of ``kind`` whose bytes do not match the digest in their name (or cannot be read)."""
    return [p for p in _named(Path(folder), kind) if _damaged(p)]
