"""The results log (JSON lines): :func:`append_result`, :func:`read_results`, :func:`results_table`.

Record schema (one JSON object per line)::

    {
      "feature_key": str,               # the view's feature key (hash)
      "identity": {...},                # the view's identity (backbone, layer, ...)
      "view": str,                      # path of the HDF5 view
      "data": str,                      # the data set's name (view file name without its fingerprint)
      "head": str,                      # head name, e.g. "mlp", "logreg"
      "params": {...},                  # the hyper-parameters the head was fitted with: its tunable
                                        # ones (default sweep grid's names) plus any given or swept,
                                        # defaults included, swept ones as chosen on val
      "params_given": {...},            # the ones passed explicitly (not swept)
      "grid": {name: [values]},         # the grid swept ({} without a sweep)
      "split": {"seed": int, "val_fraction": float, "test_fraction": float,
                "n_train": int, "n_val": int, "n_test": int},
      "metrics": {"val": <compute_metrics dict>, "test": <compute_metrics dict>},
                                        # each with <metric>_ci95: [lo, hi] beside every score
      "timings": {"fit_s": float, "predict_s": float},
      "versions": {...},                # library versions
      "timestamp": str,                 # added by append_result, ISO-8601 UTC
      "featcache_version": str          # added by append_result
    }

The ``split`` block comes from :func:`featcache.train.splits.split_summary`, the
``metrics`` blocks from :func:`featcache.train.metrics.compute_metrics`. Any other keys
are kept as they are; :func:`results_table` tolerates missing ones (records written
before ``data`` existed get it from their ``view`` file name).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

try:  # POSIX only; on other systems append_result relies on O_APPEND alone
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from featcache.train.splits import EvaluationError
from featcache.train.stats import with_ci

__all__ = ["ResultList", "append_result", "finite", "format_table_row", "get_path", "interval_of", "jsonable",
           "no_results_message", "read_results", "record_data", "results_table", "TABLE_COLUMNS", "INTERVAL_COLUMNS"]

log = logging.getLogger(__name__)


def _featcache_version() -> str:
    pkg = sys.modules.get("featcache")
    v = getattr(pkg, "__version__", None)
    if v:
        return str(v)
    try:
        return version("featcache")
    except Exception:  # PackageNotFoundError and friends: running from a checkout
        return "unknown"


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, non-finite floats -> None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
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
            "featcache.train.results)"
        )
    rec = jsonable(dict(record))
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
    ``total``: valid records in the log before filtering; ``pairs``: the distinct
    ``(feature_key, data)`` among them, and ``feature_keys`` / ``data_names`` (sorted), to
    say what a filter could have matched; ``filters``: the filters applied,
    ``{"feature_key": ..., "data": ...}``.
    """

    malformed: int = 0
    malformed_lines: list[int]

    def __init__(self, items: Iterable = (), malformed_lines: Iterable[int] = (), *, total: int | None = None,
                 pairs: Iterable[tuple[str, str | None]] = (), filters: Mapping[str, str | None] | None = None):
        super().__init__(items)
        self.malformed_lines = list(malformed_lines)
        self.malformed = len(self.malformed_lines)
        self.total = len(self) if total is None else int(total)
        self.pairs = sorted(set(pairs), key=lambda p: (p[0], p[1] or ""))
        self.feature_keys = sorted({k for k, _ in self.pairs})
        self.data_names = sorted({d for _, d in self.pairs if d is not None})
        self.filters = dict(filters or {"feature_key": None, "data": None})


def record_data(rec: Mapping) -> str | None:
    """The data set name of a record: its ``data``, else its view's file name without the fingerprint."""
    data = rec.get("data")
    if isinstance(data, str) and data:
        return data
    view = rec.get("view")
    if isinstance(view, str) and view:
        return Path(view).name.removesuffix(".h5").rsplit("-", 1)[0] or None
    return None


def read_results(log_path: str | os.PathLike, *, feature_key: str | None = None,
                 data: str | None = None) -> ResultList:
    """Read the JSON-lines results log.

    A missing log is an empty list. Blank lines are ignored; lines that are not valid
    JSON objects are skipped and counted (``result.malformed``, ``result.malformed_lines``,
    plus one logged warning). ``feature_key`` keeps records whose ``feature_key`` equals it
    or starts with it (so a short key shown by :func:`results_table` works); written as
    ``KEY:DATA`` (like a view reference) it also filters on the data. ``data`` keeps records
    on that data set (its name, as in the table's ``data`` column). When the filters match
    nothing, :func:`no_results_message` says what the log holds.
    """
    if feature_key is not None and ":" in str(feature_key):
        key_part, _, data_part = str(feature_key).partition(":")
        if data is not None and data_part and data != data_part:
            raise EvaluationError(
                f"feature_key={feature_key!r} names the data {data_part!r} but data={data!r}; expected one "
                "data set; drop one of the two"
            )
        feature_key, data = key_part or None, data or data_part or None
    if feature_key is not None and not str(feature_key).strip():
        feature_key = None
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
    total, pairs = 0, set()
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
        total += 1
        fk, name = rec.get("feature_key"), record_data(rec)
        if isinstance(fk, str):
            pairs.add((fk, name))
        if feature_key is not None and not (isinstance(fk, str) and fk.startswith(str(feature_key))):
            continue
        if data is not None and name != str(data):
            continue
        records.append(rec)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        log.warning("results log %s: skipped %d malformed line(s): %s", path, len(bad), shown)
    return ResultList(records, bad, total=total, pairs=pairs, filters={"feature_key": feature_key, "data": data})


def _listing(values: list[str], n: int = 5) -> str:
    shown = ", ".join(values[:n])
    return shown + (f" and {len(values) - n} more" if len(values) > n else "")


def no_results_message(records: ResultList) -> str:
    """What to print when :func:`read_results` returned no record.

    An empty (or missing) log: ``no results yet; run `featcache fit-head` first``. A log
    whose records the filters all left out: which filter matched nothing, what the log
    does hold, and how to fix the filter.
    """
    filters = getattr(records, "filters", None) or {}
    key, data = filters.get("feature_key"), filters.get("data")
    if not getattr(records, "total", 0) or (key is None and data is None):
        return "no results yet; run `featcache fit-head` first"
    n = f"{records.total} result{'s' if records.total != 1 else ''}"
    on_key = [p for p in records.pairs if key is None or p[0].startswith(str(key))]
    if not on_key:
        return (f"no results on feature key {key!r}: none of the {n} in the log has a key starting with it; "
                f"the log holds feature keys {_listing(records.feature_keys)}; check the key (a prefix works) "
                "or drop --key")
    names = sorted({d for _, d in on_key if d is not None})
    where = f" on feature key {key!r}" if key is not None else ""
    return (f"no results on data {data!r}{where} among the {n} in the log; expected one of the data sets "
            f"{_listing(names)}; check the name or drop the data filter")


_MISSING = object()


def get_path(obj: Any, dotted: str, default: Any = _MISSING) -> Any:
    """``obj["a"]["b"]`` for ``dotted="a.b"``; ``default`` when a part is missing."""
    cur = obj
    for part in dotted.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return default
    return cur


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
    if isinstance(params, Mapping):
        params = {k: (":".join(map(str, v)) if isinstance(v, list) and v and all(
            isinstance(x, int) and not isinstance(x, bool) for x in v) else v) for k, v in params.items()}
    if not isinstance(params, Mapping):
        return "" if params is None else str(params)
    return ", ".join(f"{k}={v}" for k, v in params.items())


def finite(v: Any) -> float | None:
    """``v`` as a finite float, else None (missing, None, booleans, non-numbers, NaN, inf)."""
    if v is _MISSING or v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


TABLE_COLUMNS = (
    "feature_key", "backbone", "data", "head", "params",
    "val_acc", "test_acc", "balanced_acc", "macro_f1", "fit_s",
)
_NUMERIC_COLUMNS = TABLE_COLUMNS[TABLE_COLUMNS.index("val_acc"):]
#: Table column -> the metrics path of its value; ``<column>_ci95`` is that metric's interval.
INTERVAL_COLUMNS = {"val_acc": "val.accuracy", "test_acc": "test.accuracy",
                    "balanced_acc": "test.balanced_accuracy", "macro_f1": "test.macro_f1"}


def interval_of(metrics: Mapping, path: str) -> list[float] | None:
    """The ``[lo, hi]`` stored beside the metric at ``path`` (``<metric>_ci95``), else None."""
    ci = get_path(metrics, path + "_ci95", None)
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    lo, hi = finite(ci[0]), finite(ci[1])
    return None if lo is None or hi is None else [lo, hi]


def _table_row(rec: Mapping, intervals: bool) -> dict:
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), Mapping) else {}
    row = {
        "feature_key": None if rec.get("feature_key") is None else str(rec["feature_key"]),
        "backbone": _backbone_of(rec),
        "data": record_data(rec),
        "head": rec.get("head"),
        "params": _params_str(rec.get("params")),
    }
    for col, path in INTERVAL_COLUMNS.items():
        row[col] = finite(get_path(metrics, path))
        if intervals:
            row[col + "_ci95"] = interval_of(metrics, path)
    row["fit_s"] = finite(get_path(rec, "timings.fit_s"))
    return row


def _sort_key(rec: Mapping, row: dict, sort_by: str) -> float | None:
    if sort_by in row:
        return row[sort_by]
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), Mapping) else {}
    v = get_path(metrics, sort_by)
    if v is _MISSING:
        v = get_path(rec, sort_by)
    return finite(v)


def results_table(records: Iterable[Mapping], *, sort_by: str = "test.accuracy", intervals: bool = False) -> list[dict]:
    """Flatten records to table rows, best first.

    Row keys (:data:`TABLE_COLUMNS`): ``feature_key`` (whole: keys are ``<backbone>-<12 hex>``, and
    a shortened one named only the backbone), ``backbone``,
    ``data`` (the data set: records of different data under one feature key were scored on
    different test sets; filter with ``read_results(..., data=...)``), ``head``, ``params``
    (``"k=v, ..."``, tuples as ``512:256``), ``val_acc``, ``test_acc``, ``balanced_acc`` and
    ``macro_f1`` (both on test), ``fit_s``. Missing values are ``None``. With ``intervals``
    each score column ``C`` of :data:`INTERVAL_COLUMNS` is followed by ``C_ci95``: the
    record's 95 % interval ``[lo, hi]``, ``None`` for records written before intervals.

    ``sort_by`` is a row column (``"fit_s"``, ``"val_acc"``), a dotted path into
    ``metrics`` (``"test.accuracy"``, ``"val.macro_f1"``) or a dotted path into the
    record (``"timings.predict_s"``). Timings (columns/paths ending in ``_s`` or
    ``_seconds``) sort ascending, everything else descending; rows without a value come
    last; ties keep log order.
    """
    records = [r for r in records if isinstance(r, Mapping)]
    rows = [_table_row(rec, intervals) for rec in records]
    keys = [_sort_key(rec, row, sort_by) for rec, row in zip(records, rows)]
    if rows and all(k is None for k in keys):
        raise EvaluationError(
            f"sort_by={sort_by!r} matches no numeric value in any of the {len(rows)} records; "
            f"expected a column ({', '.join(_NUMERIC_COLUMNS)}), a metrics path like "
            "'test.accuracy' or 'val.macro_f1', or a record path like 'timings.fit_s'"
        )
    ascending = sort_by.endswith("_s") or sort_by.endswith("_seconds")
    order = sorted(
        range(len(rows)),
        key=lambda i: (keys[i] is None, 0.0 if keys[i] is None else (keys[i] if ascending else -keys[i]), i),
    )
    return [rows[i] for i in order]


def format_table_row(row: Mapping[str, Any]) -> dict:
    """A row of :func:`results_table` (``intervals=True``) as text cells: scores as
    ``0.667 [0.52, 0.79]`` (see :func:`featcache.train.stats.with_ci`), the ``_ci95`` columns
    folded into them, other floats with 4 decimals (``fit_s`` with 2 and ``s``)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.endswith("_ci95"):
            continue
        if k in INTERVAL_COLUMNS:
            out[k] = with_ci(v, row.get(k + "_ci95"))
        elif k == "fit_s":
            out[k] = "-" if v is None else f"{v:.2f}"
        else:
            out[k] = f"{v:.4f}" if isinstance(v, float) else v
    return out
