"""The results log (JSON lines): :func:`append_result`, :func:`read_results`, :func:`results_table`.

Record schema (one JSON object per line)::

    {
      "feature_key": str,               # the view's feature key (hash)
      "identity": {...},                # the view's identity (backbone, layer, ...)
      "view": str,                      # path of the HDF5 view
      "head": str,                      # head name, e.g. "mlp", "logreg"
      "params": {...},                  # head hyper-parameters (the chosen ones)
      "split": {"seed": int, "val_fraction": float, "test_fraction": float,
                "n_train": int, "n_val": int, "n_test": int},
      "metrics": {"val": <compute_metrics dict>, "test": <compute_metrics dict>},
      "timings": {"fit_s": float, "predict_s": float},
      "versions": {...},                # library versions
      "timestamp": str,                 # added by append_result, ISO-8601 UTC
      "featcache_version": str          # added by append_result
    }

The ``split`` block comes from :func:`featcache.splits.split_summary`, the
``metrics`` blocks from :func:`featcache.metrics.compute_metrics`. Any other keys
are kept as they are; :func:`results_table` tolerates missing ones.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

try:  # POSIX only; on other systems append_result relies on O_APPEND alone
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from featcache.splits import EvaluationError

__all__ = ["ResultList", "append_result", "read_results", "results_table", "TABLE_COLUMNS"]

log = logging.getLogger(__name__)


def _featcache_version() -> str:
    pkg = sys.modules.get("featcache")
    v = getattr(pkg, "__version__", None)
    if v:
        return str(v)
    try:
        from importlib.metadata import version

        return version("featcache")
    except Exception:  # PackageNotFoundError and friends: running from a checkout
        return "unknown"


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, non-finite floats -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    return str(obj)


def append_result(log_path: str | os.PathLike, record: Mapping[str, Any]) -> dict:
    """Append one record as a JSON line to ``log_path``; return the record as written.

    Adds ``timestamp`` (ISO-8601, UTC, e.g. ``2024-05-01T12:00:00.123Z``) and
    ``featcache_version``. numpy values are converted to plain JSON types, NaN/inf to
    ``null``. The parent folder is created. The line is written with one ``os.write``
    on a file opened with ``O_APPEND`` so concurrent writers on a local file system do
    not interleave; on POSIX an advisory ``flock`` is also held for the write. If the
    file does not end with a newline (an earlier writer died mid-line) a newline is
    written first so only that broken line is lost.
    """
    if not isinstance(record, Mapping):
        raise EvaluationError(
            f"record is a {type(record).__name__}; expected a dict (see the record schema in "
            "featcache.results)"
        )
    rec = _jsonable(dict(record))
    rec["timestamp"] = (
        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    rec["featcache_version"] = _featcache_version()
    line = (json.dumps(rec, allow_nan=False, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")

    path = Path(log_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise EvaluationError(
            f"cannot open results log {str(path)!r} for appending: {e.strerror or e}; expected a "
            "writable file path; choose another --results-log or fix the permissions"
        ) from e
    try:
        if fcntl is not None:  # serialise cooperating writers (advisory; O_APPEND alone suffices
            fcntl.flock(fd, fcntl.LOCK_EX)  # for the line, the lock makes the newline repair safe)
        size = os.fstat(fd).st_size
        data = line
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + line
        written = os.write(fd, data)
        while written < len(data):  # only on exotic file systems / full disks
            written += os.write(fd, data[written:])
    except OSError as e:
        raise EvaluationError(
            f"cannot write to results log {str(path)!r}: {e.strerror or e}; expected a writable "
            "file; check free disk space and permissions"
        ) from e
    finally:
        os.close(fd)  # also releases the lock
    return rec


class ResultList(list):
    """A list of records that also says how many lines were skipped as malformed.

    ``malformed``: count; ``malformed_lines``: their 1-based line numbers.
    """

    malformed: int = 0
    malformed_lines: list[int]

    def __init__(self, items: Iterable = (), malformed_lines: Iterable[int] = ()):
        super().__init__(items)
        self.malformed_lines = list(malformed_lines)
        self.malformed = len(self.malformed_lines)


def read_results(log_path: str | os.PathLike, *, feature_key: str | None = None) -> ResultList:
    """Read the JSON-lines results log.

    A missing log is an empty list. Blank lines are ignored; lines that are not valid
    JSON objects are skipped and counted (``result.malformed``, ``result.malformed_lines``,
    plus one logged warning). ``feature_key`` keeps records whose ``feature_key`` equals it
    or starts with it (so a short key shown by :func:`results_table` works).
    """
    path = Path(log_path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ResultList()
    except OSError as e:
        raise EvaluationError(
            f"cannot read results log {str(path)!r}: {e.strerror or e}; expected a readable "
            "JSON-lines file; check the path (--results-log)"
        ) from e
    records, bad = [], []
    for lineno, bline in enumerate(raw.split(b"\n"), start=1):
        if not bline.strip():
            continue
        try:
            rec = json.loads(bline.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            bad.append(lineno)
            continue
        if not isinstance(rec, dict):
            bad.append(lineno)
            continue
        if feature_key is not None:
            fk = rec.get("feature_key")
            if not (isinstance(fk, str) and fk.startswith(str(feature_key))):
                continue
        records.append(rec)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        log.warning("results log %s: skipped %d malformed line(s): %s", path, len(bad), shown)
    return ResultList(records, bad)


_MISSING = object()


def _get_path(obj: Any, dotted: str, default: Any = _MISSING) -> Any:
    """``obj["a"]["b"]`` for ``dotted="a.b"``; ``default`` when a part is missing."""
    cur = obj
    for part in dotted.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return default
    return cur


def _short_key(key: Any, n: int = 12) -> str | None:
    if key is None:
        return None
    return str(key)[:n]


def _backbone_of(rec: Mapping) -> str | None:
    ident = rec.get("identity")
    for source in (ident if isinstance(ident, Mapping) else {}, rec):
        for k in ("backbone", "backbone_name", "model"):
            v = source.get(k)
            if isinstance(v, Mapping):
                v = v.get("name")
            if v is not None:
                return str(v)
    return None


def _params_str(params: Any) -> str:
    if not isinstance(params, Mapping):
        return "" if params is None else str(params)
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _finite(v: Any) -> float | None:
    """``v`` as a finite float, else None (missing, None, booleans, non-numbers, NaN, inf)."""
    if v is _MISSING or v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


TABLE_COLUMNS = (
    "feature_key", "backbone", "head", "params",
    "val_acc", "test_acc", "balanced_acc", "macro_f1", "fit_s",
)


def results_table(records: Iterable[Mapping], *, sort_by: str = "test.accuracy") -> list[dict]:
    """Flatten records to table rows, best first.

    Row keys (:data:`TABLE_COLUMNS`): ``feature_key`` (first 12 characters), ``backbone``,
    ``head``, ``params`` (``"k=v, ..."``), ``val_acc``, ``test_acc``, ``balanced_acc`` and
    ``macro_f1`` (both on test), ``fit_s``. Missing values are ``None``.

    ``sort_by`` is a row column (``"fit_s"``, ``"val_acc"``), a dotted path into
    ``metrics`` (``"test.accuracy"``, ``"val.macro_f1"``) or a dotted path into the
    record (``"timings.predict_s"``). Timings (columns/paths ending in ``_s`` or
    ``_seconds``) sort ascending, everything else descending; rows without a value come
    last; ties keep log order.
    """
    records = [r for r in records if isinstance(r, Mapping)]
    rows = []
    keys = []
    for rec in records:
        metrics = rec.get("metrics") if isinstance(rec.get("metrics"), Mapping) else {}
        row = {
            "feature_key": _short_key(rec.get("feature_key")),
            "backbone": _backbone_of(rec),
            "head": rec.get("head"),
            "params": _params_str(rec.get("params")),
            "val_acc": _finite(_get_path(metrics, "val.accuracy")),
            "test_acc": _finite(_get_path(metrics, "test.accuracy")),
            "balanced_acc": _finite(_get_path(metrics, "test.balanced_accuracy")),
            "macro_f1": _finite(_get_path(metrics, "test.macro_f1")),
            "fit_s": _finite(_get_path(rec, "timings.fit_s")),
        }
        if sort_by in row:
            key = row[sort_by]
        else:
            v = _get_path(metrics, sort_by)
            if v is _MISSING:
                v = _get_path(rec, sort_by)
            key = _finite(v)
        rows.append(row)
        keys.append(key)
    if rows and all(k is None for k in keys):
        raise EvaluationError(
            f"sort_by={sort_by!r} matches no numeric value in any of the {len(rows)} records; "
            f"expected a column ({', '.join(TABLE_COLUMNS[4:])}), a metrics path like "
            "'test.accuracy' or 'val.macro_f1', or a record path like 'timings.fit_s'"
        )
    ascending = sort_by.endswith("_s") or sort_by.endswith("_seconds")
    order = sorted(
        range(len(rows)),
        key=lambda i: (keys[i] is None, 0.0 if keys[i] is None else (keys[i] if ascending else -keys[i]), i),
    )
    return [rows[i] for i in order]
