"""Export a feature view to a portable file: ``npz``, ``csv`` or ``parquet``.

=========  ==================================================================================
format     content
=========  ==================================================================================
npz        ``features`` (N, D), ``labels`` (N,; int64, -1 = unlabelled), ``ids`` (N,; str),
           ``split`` (N,; str), ``class_names`` (C,; str), plus ``feature_key`` and
           ``identity`` (JSON) as 0-d strings. Uncompressed; ``np.load(path)`` reads it
           without ``allow_pickle``.
csv        header ``id,label,split,f0,...,f{D-1}``; ``label`` is the class name (empty =
           unlabelled); features printed with 9 significant digits (exact for float32).
parquet    columns ``id``, ``label`` (class name, null = unlabelled), ``split``, ``features``
           (fixed-size list of D floats); schema metadata ``feature_key``, ``identity``,
           ``class_names``. Needs ``pyarrow`` (not a dependency of featcache).
=========  ==================================================================================

The view is read in blocks (memory-bounded), the output is written to a temporary
file in the destination folder and moved into place with ``os.replace``: a
half-written export never appears under the final name.
"""
from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from featcache.atomic import atomic_path
from featcache.store.views import load_features
from featcache.errors import FeatcacheError, UnknownNameError

__all__ = ["ExportError", "ExportResult", "FORMATS", "export_view"]

FORMATS = ("npz", "csv", "parquet")
BLOCK_BYTES = 32 << 20  # memory bound when copying feature rows


class ExportError(FeatcacheError):
    """A view cannot be exported in the requested format or to the requested place."""


@dataclass
class ExportResult:
    path: str
    format: str
    rows: int
    dim: int
    feature_key: str
    view: str
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"exported {self.rows} rows x {self.dim} of {self.feature_key} ({self.format}, "
                f"{self.bytes / 2 ** 20:.1f} MB) -> {self.path}")


def _require_pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ExportError("parquet export needs pyarrow, which is not installed in this environment; "
                          "run `pip install pyarrow` (featcache does not depend on it), or export with "
                          "--format npz or --format csv") from None
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def _default_name(f, fmt: str) -> str:
    data = str(f.attrs.get("data_name") or Path(f.path).stem.rsplit("-", 1)[0])
    return f"{f.feature_key}-{data}.{fmt}"


def _blocks(features, n: int, dim: int):
    step = max(1, BLOCK_BYTES // max(1, dim * features.dtype.itemsize))
    for start in range(0, n, step):
        yield start, np.asarray(features[start:start + step])


def _label_names(labels: np.ndarray, class_names: list[str]) -> list[str | None]:
    return [class_names[i] if 0 <= i < len(class_names) else None for i in labels.tolist()]


def _write_npz(tmp: Path, f, n: int, dim: int) -> None:
    def strings(values) -> np.ndarray:
        return np.array(list(values), dtype=str) if len(values) else np.zeros(0, dtype="<U1")

    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        dtype = np.dtype(f.features.dtype)
        with z.open("features.npy", "w", force_zip64=True) as fh:
            npformat.write_array_header_2_0(
                fh, {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": (n, dim)})
            for _, block in _blocks(f.features, n, dim):
                fh.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
        arrays = {
            "labels": np.asarray(f.labels, dtype=np.int64),
            "ids": strings(f.ids),
            "split": strings(f.split.tolist()),
            "class_names": strings(f.class_names),
            "feature_key": np.array(f.feature_key),
            "identity": np.array(json.dumps(f.identity, sort_keys=True)),
        }
        for name, arr in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as fh:
                npformat.write_array(fh, arr, allow_pickle=False)


def _write_csv(tmp: Path, f, n: int, dim: int) -> None:
    names = _label_names(f.labels, f.class_names)
    row_fmt = ",".join(["%.9g"] * dim)
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["id", "label", "split", *(f"f{j}" for j in range(dim))])
        buf = io.StringIO()
        # The terminator of the prefix writer is cut off below, but the csv module quotes a field
        # that contains any character of its terminator: "\r\n" makes it quote ids (and labels)
        # holding a newline or a carriage return, which would otherwise split the record.
        prefix = csv.writer(buf, lineterminator="\r\n")
        for start, block in _blocks(f.features, n, dim):
            lines = []
            for k, vec in enumerate(block.astype(np.float64).tolist()):
                i = start + k
                buf.seek(0)
                buf.truncate()
                prefix.writerow([f.ids[i], names[i] or "", f.split[i]])
                lines.append(buf.getvalue()[:-2] + ("," + row_fmt % tuple(vec) if dim else "") + "\n")
            fh.write("".join(lines))


def _write_parquet(tmp: Path, f, n: int, dim: int, pa, pq) -> None:
    names = _label_names(f.labels, f.class_names)
    value_type = pa.float16() if np.dtype(f.features.dtype) == np.float16 else pa.float32()
    schema = pa.schema(
        [("id", pa.string()), ("label", pa.string()), ("split", pa.string()),
         ("features", pa.list_(value_type, dim))],
        metadata={"feature_key": f.feature_key, "identity": json.dumps(f.identity, sort_keys=True),
                  "class_names": json.dumps(f.class_names)})
    with pq.ParquetWriter(str(tmp), schema) as writer:
        for start, block in _blocks(f.features, n, dim):
            end = start + len(block)
            flat = pa.array(np.ascontiguousarray(block).reshape(-1), type=value_type)
            writer.write_table(pa.Table.from_arrays(
                [pa.array(f.ids[start:end], pa.string()), pa.array(names[start:end], pa.string()),
                 pa.array(f.split[start:end].tolist(), pa.string()),
                 pa.FixedSizeListArray.from_arrays(flat, dim)], schema=schema))
        if n == 0:
            writer.write_table(schema.empty_table())


def export_view(ref: str | os.PathLike, fmt: str | None = None, out: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None) -> ExportResult:
    """Write the view ``ref`` (``KEY``, ``KEY:DATA`` or a view path) as ``fmt`` to ``out``.

    ``fmt`` defaults to the suffix of ``out`` (``npz`` when it has none, or is a folder; an
    ``ExportError`` for another suffix, so ``-o feats.tsv`` does not silently get an npz);
    ``out`` defaults to ``./<feature_key>-<data>.<fmt>``. An existing ``out`` is replaced
    (atomically). Returns an :class:`ExportResult`.
    """
    if fmt is None:
        suffix = Path(out).suffix.lower().lstrip(".") if out and not Path(out).is_dir() else ""
        if suffix and suffix not in FORMATS:
            raise ExportError(f"cannot tell the export format from -o {str(out)!r}: its suffix {'.' + suffix!r} is "
                              f"none of {', '.join('.' + f for f in FORMATS)}; name the file with one of them, "
                              "or pass --format")
        fmt = suffix or "npz"
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise UnknownNameError("export format", fmt, FORMATS, hint="--format npz, csv or parquet")
    pa = pq = None
    if fmt == "parquet":
        pa, pq = _require_pyarrow()  # before any work
    f = load_features(ref, cache_dir=cache_dir, mmap=True)
    try:
        n, dim = (int(x) for x in f.features.shape)
        path = Path(out).expanduser() if out else Path.cwd() / _default_name(f, fmt)
        if path.is_dir():
            path = path / _default_name(f, fmt)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ExportError(f"cannot create the folder of {str(path)!r} ({e.strerror or e}); choose another "
                              "-o path or fix the permissions") from None
        try:
            with atomic_path(path) as tmp:
                if fmt == "npz":
                    _write_npz(tmp, f, n, dim)
                elif fmt == "csv":
                    _write_csv(tmp, f, n, dim)
                else:
                    _write_parquet(tmp, f, n, dim, pa, pq)
        except OSError as e:
            raise ExportError(f"cannot write {str(path)!r} ({e.strerror or e}); check free disk space and "
                              "permissions, or choose another -o path") from None
        return ExportResult(path=str(path), format=fmt, rows=n, dim=dim, feature_key=f.feature_key,
                            view=f.path, bytes=path.stat().st_size)
    finally:
        f.features.file.close()
