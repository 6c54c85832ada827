"""Saving and loading fitted heads without pickle.

A head file (default extension ``.head.npz``, see :data:`HEAD_SUFFIX`) is a plain ``.npz``
archive written with ``np.savez``: one entry per array of ``head.get_state()`` plus the entry
``__meta__``, a uint8 array holding a UTF-8 JSON document::

    {"format": "featcache-head", "format_version": 1, "head": "<registered name>",
     "head_class": "<Class>", "params": {...get_params()...}, "feature_key": "...",
     "class_names": [...] | null, "metadata": {...}, "versions": {"featcache": ...,
     "numpy": ..., "torch": ..., "scikit-learn": ..., "python": ...}}

Loading uses ``np.load(..., allow_pickle=False)``: nothing in a head file is ever executed.
Tuples among the parameters are stored as JSON lists and turned back into tuples where the
head's default is a tuple.
"""
from __future__ import annotations

import inspect
import json
import os
import platform
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featcache.environment import installed_version
from featcache.atomic import atomic_path
from featcache.errors import HeadError, UnknownNameError
from featcache.train.heads import get_head_class
from featcache.train.heads.registry import HEADS

FORMAT = "featcache-head"
FORMAT_VERSION = 1
HEAD_SUFFIX = ".head.npz"
META_KEY = "__meta__"

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"


@dataclass
class LoadedHead:
    """A head read by :func:`load_head`, with what was saved alongside it."""

    head: Any
    name: str
    feature_key: str
    class_names: list[str] | None
    metadata: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    path: Path | None = None
    format_version: int = FORMAT_VERSION


def _version(dist: str) -> str:
    return installed_version(dist) or "unknown"


def library_versions() -> dict[str, str]:
    """Versions recorded in head files (featcache, numpy, torch, scikit-learn, python)."""
    return {
        "featcache": _version("featcache"),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "scikit-learn": _version("scikit-learn"),
        "python": platform.python_version(),
    }


def _to_json(value: Any, what: str) -> Any:
    """A JSON-compatible copy of ``value`` (tuples -> lists, numpy scalars -> Python)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{what}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise HeadError(
                    f"{what} has the key {k!r} of type {type(k).__name__}; expected string "
                    "keys (the head file stores JSON); convert the keys to str"
                )
            out[k] = _to_json(v, f"{what}[{k!r}]")
        return out
    raise HeadError(
        f"{what} = {value!r} ({type(value).__name__}) cannot be saved in a head file; "
        "expected JSON data (str, int, float, bool, None, lists, dicts); convert it "
        "(e.g. random_state must be an int or None)"
    )


def _with_suffix(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.name.endswith(".npz") else path.with_name(path.name + HEAD_SUFFIX)


def save_head(
    head: Any,
    path: str | os.PathLike,
    *,
    name: str,
    feature_key: str,
    class_names: list[str] | None,
    metadata: dict | None = None,
) -> Path:
    """Write a fitted ``head`` to ONE file that executes no code on load; returns its path.

    ``path`` gets the suffix ``.head.npz`` unless it already ends in ``.npz``. ``name`` is
    the registered head name, ``feature_key`` the identity of the features the head was
    fitted on (checked by :func:`check_feature_key`), ``class_names`` the names of the
    classes, ``metadata`` any JSON-serialisable dict. The file is written to a temporary
    file in the same directory and moved into place atomically (``os.replace``).
    """
    cls = get_head_class(name)
    if type(head) is not cls:
        raise HeadError(
            f"the head to save is a {type(head).__name__}, but name={name!r} is registered "
            f"for {cls.__name__}; pass the head's own registered name"
        )
    if not isinstance(feature_key, str) or not feature_key:
        raise HeadError(
            f"feature_key={feature_key!r} is not valid; expected a non-empty string that "
            "identifies the features (backbone, layer, preprocessing); pass the store's key"
        )
    if class_names is not None and (
        isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)
    ):
        raise HeadError(
            f"class_names={class_names!r} is not valid; expected a list of strings or None; "
            "pass the class names as strings"
        )
    try:
        state = head.get_state()
    except Exception as exc:  # NotFittedError and friends
        raise HeadError(
            f"cannot save the {name!r} head: {exc}; expected a fitted head; call fit first"
        ) from exc
    arrays: dict[str, np.ndarray] = {}
    for key, value in state.items():
        value = np.asarray(value)
        if value.dtype == object or key == META_KEY:
            raise HeadError(
                f"state entry {key!r} of the {name!r} head is not a plain array (dtype "
                f"{value.dtype}); expected numeric or string arrays; this is a bug in the head"
            )
        arrays[key] = value
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "head": name,
        "head_class": cls.__name__,
        "params": {
            k: _to_json(v, f"parameter {k}") for k, v in head.get_params(deep=False).items()
        },
        "feature_key": feature_key,
        "class_names": list(class_names) if class_names is not None else None,
        "metadata": _to_json(dict(metadata or {}), "metadata"),
        "versions": library_versions(),
    }
    text = json.dumps(meta, ensure_ascii=False, sort_keys=True)  # NaN stays NaN
    arrays[META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    path = _with_suffix(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _fail(path: Path, problem: str, fix: str) -> HeadError:
    return HeadError(f"head file '{path}' {problem}; {fix}")


_RESAVE = "re-save the head with featcache (save_head) or re-fit it"


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise _fail(path, "does not exist", f"expected a file written by save_head "
                    f"(*{HEAD_SUFFIX}); check the path or fit and save a head first")
    if not path.is_file():
        raise _fail(path, "is not a file", f"pass the path of a *{HEAD_SUFFIX} file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not magic:
        raise _fail(path, "is empty (0 bytes; an interrupted write?)", _RESAVE)
    if magic not in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
        what = "a pickle" if magic[:1] == b"\x80" else "not an .npz archive"
        raise _fail(path, f"is {what}, not a featcache head file (refused without loading it)",
                    f"expected a file written by save_head (*{HEAD_SUFFIX}); {_RESAVE}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise _fail(
                path, "contains pickled Python objects, which featcache never loads because "
                "unpickling can execute code", f"{_RESAVE}"
            ) from None
        raise _fail(path, f"is corrupted ({exc})", _RESAVE) from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
        problem = f"is truncated or corrupted ({type(exc).__name__}: {exc})"
        raise _fail(path, problem, _RESAVE) from None


def _restore_params(cls: type, params: dict) -> dict:
    """JSON params back to the head's types (lists -> tuples where the default is a tuple)."""
    signature = inspect.signature(cls.__init__)
    out = {}
    for key, value in params.items():
        default = signature.parameters[key].default if key in signature.parameters else None
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out


def _writer_version(meta: dict) -> str:
    versions = meta.get("versions")
    return str(versions.get("featcache", "unknown")) if isinstance(versions, dict) else "unknown"


def load_head(path: str | os.PathLike) -> LoadedHead:
    """Read a head written by :func:`save_head`; never unpickles.

    Raises :class:`~featcache.errors.HeadError` naming the file for a missing, truncated or
    corrupted file, a file that is not a featcache head, an unknown format version or an
    unknown head name.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    raw = arrays.pop(META_KEY, None)
    if raw is None:
        raise _fail(path, f"is an .npz archive without a {META_KEY!r} entry, so not a "
                    "featcache head file",
                    f"expected a file written by save_head (*{HEAD_SUFFIX}); {_RESAVE}")
    try:
        meta = json.loads(np.asarray(raw, dtype=np.uint8).tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise _fail(path, f"has an unreadable {META_KEY!r} entry ({exc})", _RESAVE) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise _fail(path, f"is of format {found!r}, not {FORMAT!r}",
                    f"expected a file written by featcache save_head; {_RESAVE}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(path, f"has an invalid format version {version!r}", _RESAVE)
    if version > FORMAT_VERSION:
        raise _fail(
            path, f"has format version {version}, newer than this featcache reads "
            f"(<= {FORMAT_VERSION}; written by featcache {_writer_version(meta)})",
            "upgrade featcache, or re-fit the head with this version",
        )
    name = meta.get("head")
    try:
        cls = get_head_class(name)
    except UnknownNameError as exc:
        raise _fail(path, f"holds an {exc}", "upgrade featcache or re-fit the head with one of "
                    f"{', '.join(sorted(HEADS))}") from None
    params = meta.get("params")
    feature_key = meta.get("feature_key")
    if not isinstance(params, dict) or not isinstance(feature_key, str):
        raise _fail(path, "has incomplete metadata (params / feature_key missing)", _RESAVE)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise _fail(path, f"sets parameter(s) {', '.join(unknown)} that head {name!r} of this "
                    "featcache version does not have", "upgrade featcache or re-fit the head")
    try:
        head = cls.from_state(_restore_params(cls, params), arrays)
        # smoke test: a state whose arrays do not fit together fails here, not later
        head.predict_proba(np.zeros((1, int(head.n_features_in_))))
    except HeadError as exc:
        raise _fail(path, f"holds an inconsistent {name!r} head ({exc})", _RESAVE) from None
    except Exception as exc:  # a state that does not fit the parameters, ...
        raise _fail(path, f"holds an inconsistent {name!r} head ({type(exc).__name__}: {exc})",
                    _RESAVE) from None
    return LoadedHead(
        head=head,
        name=name,
        feature_key=feature_key,
        class_names=meta.get("class_names"),
        metadata=meta.get("metadata") if isinstance(meta.get("metadata"), dict) else {},
        versions=meta.get("versions") if isinstance(meta.get("versions"), dict) else {},
        path=path,
        format_version=version,
    )


def check_feature_key(loaded: LoadedHead, feature_key: str) -> None:
    """Raise :class:`HeadError` if ``loaded`` was fitted on features other than ``feature_key``."""
    if loaded.feature_key != feature_key:
        where = f" ({loaded.path})" if loaded.path else ""
        raise HeadError(
            f"the head{where} was fitted on features {loaded.feature_key!r} but is applied to "
            f"features {feature_key!r}; expected the same feature key; extract features with "
            f"the backbone/layer/preprocessing of {loaded.feature_key!r} or re-fit the head "
            f"on {feature_key!r}"
        )
