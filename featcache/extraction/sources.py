"""Data sources -> a manifest: stable ids, paths, labels, class names, splits.

Sources:
- an image folder: one sub-folder per class (images may be nested below it),
  optionally with ``train``/``val``/``test`` split folders above the classes, or
  no class folders at all (unlabelled);
- a CSV file with a path column and an optional label column, images under a root;
- bundled data: ``builtin:digits`` (scikit-learn's digits written out once as
  PNG files) and ``builtin:clipart`` (320 public-domain clip-art images).

Images are not opened here; they are decoded later, by the extraction (see featcache.extraction.engine).
"""
from __future__ import annotations

import codecs
import csv
import difflib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from featcache.errors import DataError, UnknownNameError
from featcache.extraction.imagefiles import IMAGE_EXTENSIONS
from featcache.extraction.manifest import Manifest, safe_id, slug
from featcache.specs import DataSpec, field_names

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}
BUILTINS = ("digits", "clipart")
PACKAGE_DATA = Path(__file__).parent.parent / "data"


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class _Walk:
    """What one walk of a data folder shares: folders seen (loops and folders reached twice through
    symlinks), non-image files, broken symlinks."""

    def __init__(self, root: Path):
        self.root = str(root)
        self.seen: dict[tuple[int, int], tuple[str, tuple[str, str] | None]] = {}  # -> (where, owner)
        self.ignored: list[str] = []
        self.broken: list[tuple[str, str]] = []  # (id of the link, its target)

    def rel(self, path: str) -> str:
        return safe_id(path[len(self.root) + 1:]) or "."

    def visit(self, path: str, owner: tuple[str, str] | None) -> bool:
        """Record the folder ``path`` as walked for ``owner`` ((split, class); None: the data folder or a
        split folder). False when it was walked already: a symlink loop, or the same folder twice in one
        class. A folder reached for two different classes or splits is an error: its images would be
        labelled twice."""
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        if key not in self.seen:
            self.seen[key] = (self.rel(path), owner)
            return True
        where, first = self.seen[key]
        if first is None or first == owner:
            return False
        raise DataError(
            f"folder {self.rel(path)!r} is the same folder as {where!r} (through a symlink), so its images would "
            f"belong to {_owner_text(first)} and to {_owner_text(owner)}; remove one of the two links "
            "(or copy the images, if they really belong to both)"
        )

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        """(sub-folders, files) of ``path``, sorted, hidden names left out; symlinks are followed and broken
        ones that may be images or folders are recorded in ``broken``."""
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"cannot list folder {self.rel(path)!r} in {self.root!r}: {e.strerror}; fix its "
                            "permissions or move it out of the data folder") from None
        dirs, files = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:  # e.g. a symlink to itself
                is_dir = False
            if is_dir:
                dirs.append(e.path)
            elif e.is_symlink() and not os.path.exists(e.path):
                if _is_image(e.name) or not os.path.splitext(e.name)[1]:
                    self.broken.append((self.rel(e.path), os.readlink(e.path)))
                else:
                    self.ignored.append(self.rel(e.path))
            else:
                files.append(e.path)
        return dirs, files

    def images(self, top: str, owner: tuple[str, str]) -> list[str]:
        """Image files below the folder ``top`` (sorted path strings); other files go to ``ignored``."""
        found: list[str] = []
        stack = [top]
        while stack:
            path = stack.pop()
            if not self.visit(path, owner):
                continue
            dirs, files = self.listdir(path)
            for f in files:
                if _is_image(f):
                    found.append(f)
                else:
                    self.ignored.append(self.rel(f))
            stack.extend(reversed(dirs))
        return sorted(found)

    def check_broken(self) -> None:
        if self.broken:
            shown = ", ".join(f"{link!r} -> {target!r}" for link, target in self.broken[:5])
            more = f" and {len(self.broken) - 5} more" if len(self.broken) > 5 else ""
            raise DataError(
                f"{len(self.broken)} broken symlink{'s' if len(self.broken) > 1 else ''} in {self.root!r} "
                f"(the target does not exist): {shown}{more}; fix the links or delete them"
            )


def _owner_text(owner: tuple[str, str] | None) -> str:
    split, cls = owner or ("", "")
    parts = ([f"class {cls!r}"] if cls else []) + ([f"split {split!r}"] if split else [])
    return " of ".join(parts) or "the unlabelled images"


def from_folder(root: str | os.PathLike, *, labelled: bool = True, name: str | None = None) -> Manifest:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist; expected a folder of images "
                        "(one sub-folder per class) or a CSV file")
    if not root.is_dir():
        raise DataError(f"--data {str(root)!r} is neither a folder nor a .csv file")
    root = root.resolve()
    walk = _Walk(root)
    walk.visit(str(root), None)
    rows: list[tuple[str, str, str]] = []  # (path, class, split)
    top, top_files = walk.listdir(str(root))
    root_st = os.stat(root)
    top = [d for d in top if not os.path.samestat(os.stat(d), root_st)]  # root/link -> root: a loop
    split_dirs = [d for d in top if os.path.basename(d).lower() in SPLIT_NAMES]
    if split_dirs and len(split_dirs) == len(top):
        groups = [(d, SPLIT_NAMES[os.path.basename(d).lower()]) for d in split_dirs]
        walk.ignored.extend(walk.rel(f) for f in top_files)  # beside the split folders: in no split
    else:
        groups = [(str(root), "")]
    for base, split in groups:
        if base == str(root):
            subdirs, files = top, top_files
        elif walk.visit(base, None):
            subdirs, files = walk.listdir(base)
        else:
            continue  # a split folder that is a symlink to another one
        for f in files:
            if _is_image(f):
                rows.append((f, "", split))
            else:
                walk.ignored.append(walk.rel(f))
        for cls_dir in subdirs:
            cls = os.path.basename(cls_dir) if labelled else ""
            for p in walk.images(cls_dir, (split, cls)):
                rows.append((p, cls, split))
    walk.check_broken()
    ignored = walk.ignored
    if not rows:
        raise DataError(
            f"no images found in {str(root)!r} ({len(ignored)} other files); expected image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}) in one sub-folder per class"
        )
    class_names = sorted({c for _, c, _ in rows if c})
    index = {c: i for i, c in enumerate(class_names)}
    return Manifest(
        name=name or slug(root.name),
        source=str(root),
        root=str(root),
        ids=[safe_id(p[len(str(root)) + 1:]) for p, _, _ in rows],
        paths=[p for p, _, _ in rows],
        labels=np.array([index[c] if c else -1 for _, c, _ in rows], dtype=np.int64),
        class_names=class_names,
        split=[s for _, _, s in rows],
        ignored=ignored,
    )


def _is_number(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _check_label_types(labels: list[str], name: str, column: str | None) -> None:
    """Labels must be all numbers or all text: a mix is almost always a broken column."""
    present = [x for x in labels if x]
    numbers = [x for x in present if _is_number(x)]
    if numbers and len(numbers) != len(present):
        text = next(x for x in present if not _is_number(x))
        raise DataError(f"{name}: column {column!r} mixes numbers (e.g. {numbers[0]!r}) and text (e.g. {text!r}); "
                        "make the labels all numbers or all names")


def _class_order(values: list[str]) -> list[str]:
    uniq = sorted(set(values))
    try:
        return sorted(uniq, key=float)  # numeric labels in numeric order
    except ValueError:
        return uniq


def _read_csv_text(csv_path: Path) -> str:
    """The text of a CSV file: UTF-8, with or without a byte-order mark."""
    data = csv_path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"CSV file {str(csv_path)!r} is UTF-16 text; expected UTF-8: save it as 'CSV UTF-8' "
                        "(or convert it, e.g. iconv -f UTF-16 -t UTF-8)")
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        pos = start + e.start
        line = data.count(b"\n", 0, pos) + 1
        raise DataError(
            f"CSV file {str(csv_path)!r} is not UTF-8: byte 0x{data[pos]:02x} at offset {pos} (line {line}) "
            "is not valid UTF-8; expected UTF-8 text: save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 "
            "IN.csv > OUT.csv)"
        ) from None


def _missing_text(line: int, rel: str, p: Path) -> str:
    why = ""
    if p.is_symlink() and not p.exists():
        why = f" (a broken symlink to {os.readlink(p)!r})"
    elif p.is_dir():
        why = " (a folder)"
    return f"line {line} {rel!r}{why}"


def from_csv(csv_path: str | os.PathLike, *, path_column: str = "path", label_column: str | None = "label",
             root: str | os.PathLike | None = None, split_column: str | None = None) -> Manifest:
    """A manifest from a CSV file: a header line naming the columns, then one line per image.

    Every row has one value per column; blank lines are skipped; a blank label means unlabelled and
    a blank split value means no split.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"CSV file {str(csv_path)!r} does not exist")
    base = Path(root).expanduser().resolve() if root else csv_path.resolve().parent
    header, records = _csv_records(csv_path, (path_column, label_column, split_column))
    rows = _CsvRows(csv_path.name, base, header, path_column, label_column, split_column)
    for line, r in records:
        rows.add(line, r)
    rows.check_files()
    _check_label_types(rows.labels, csv_path.name, label_column)
    class_names = _class_order([x for x in rows.labels if x])
    index = {c: i for i, c in enumerate(class_names)}
    return Manifest(
        name=slug(csv_path.stem),
        source=str(csv_path.resolve()),
        root=str(base),
        ids=rows.ids,
        paths=rows.paths,
        labels=np.array([index[x] if x else -1 for x in rows.labels], dtype=np.int64),
        class_names=class_names,
        split=rows.splits,
    )


#: the option that names each column of a CSV source
_COLUMN_OPTIONS = ("--path-column", "--label-column", "--split-column")


def _csv_records(csv_path: Path, columns: tuple) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (checked to hold ``columns``: path, label, split) and the non-blank rows with their line numbers."""
    name = csv_path.name
    reader = csv.reader(io.StringIO(_read_csv_text(csv_path), newline=""))
    records: list[tuple[int, list[str]]] = []  # (line number, fields)
    try:
        header = next((row for row in reader if any(x.strip() for x in row)), None)
        if header is None:
            raise DataError(f"CSV file {str(csv_path)!r} is empty; expected a header line naming the columns "
                            f"(e.g. {columns[0]},{columns[1] or 'label'}) and then one line per image")
        header = [x.strip() for x in header]
        for col, opt in zip(columns, _COLUMN_OPTIONS):
            if col and col not in header:
                raise UnknownNameError(f"column of {name} (set {opt})", col, header)
        for row in reader:
            if not any(x.strip() for x in row):
                continue  # a blank line (or only commas)
            if len(row) != len(header):
                raise DataError(
                    f"{name} line {reader.line_num}: {len(row)} field{'s' if len(row) != 1 else ''} but the header "
                    f"has {len(header)} ({','.join(header)}); expected one value per column (blank for none): "
                    "fix the row, and quote values that contain commas"
                )
            records.append((reader.line_num, row))
    except csv.Error as e:
        raise DataError(f"{name} line {reader.line_num}: not valid CSV ({e}); expected comma-separated values "
                        "with a header line: fix the line") from None
    if not records:
        raise DataError(f"CSV file {str(csv_path)!r} has a header ({','.join(header)}) but no rows; expected one "
                        "line per image after it")
    return header, records


class _CsvRows:
    """The rows of a CSV source, checked one by one: ids, paths, label texts, splits, missing files."""

    def __init__(self, name: str, base: Path, header: list[str], path_column: str, label_column: str | None,
                 split_column: str | None):
        self.name, self.base, self.path_column, self.split_column = name, base, path_column, split_column
        self.i_path = header.index(path_column)
        self.i_label = header.index(label_column) if label_column else None
        self.i_split = header.index(split_column) if split_column else None
        self.ids, self.paths, self.labels, self.splits = [], [], [], []
        self.missing: list[tuple[int, str, Path]] = []
        self.seen: dict[str, int] = {}

    def add(self, line: int, r: list[str]) -> None:
        rel = r[self.i_path].strip()
        if not rel:
            raise DataError(f"{self.name} line {line}: column {self.path_column!r} is empty; expected an image "
                            "path: fill it in or remove the row")
        if rel in self.seen:
            raise DataError(f"{self.name} line {line}: path {rel!r} appears twice (first on line {self.seen[rel]}); "
                            "remove the duplicate row")
        self.seen[rel] = line
        p = (self.base / rel) if not os.path.isabs(rel) else Path(rel)
        if not p.is_file():
            self.missing.append((line, rel, p))
        self.ids.append(rel)
        self.paths.append(str(p))
        self.labels.append(r[self.i_label].strip() if self.i_label is not None else "")
        self.splits.append(self.split_of(line, r[self.i_split].strip() if self.i_split is not None else ""))

    def split_of(self, line: int, split: str) -> str:
        if split and split.lower() not in SPLIT_NAMES:
            close = difflib.get_close_matches(split.lower(), SPLIT_NAMES, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DataError(f"{self.name} line {line}: {split!r} in column {self.split_column!r} is not a split; "
                            f"{hint}expected one of {', '.join(SPLIT_NAMES)}, or blank for no split: fix the value")
        return SPLIT_NAMES[split.lower()] if split else ""

    def check_files(self) -> None:
        """Every listed file exists; when most do not, the paths are relative to another folder."""
        missing, n, name, base = self.missing, len(self.ids), self.name, str(self.base)
        if not missing:
            return
        if len(missing) * 2 > n:
            raise DataError(
                f"{len(missing)} of {n} files listed in {name} are not under {base!r} "
                f"(first: {_missing_text(*missing[0])}); set --root to the folder the {self.path_column!r} column "
                "is relative to"
            )
        shown = ", ".join(_missing_text(*m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{len(missing)} of {n} files listed in {name} are missing under {base!r}: {shown}{more}; "
                        "fix those paths or remove their rows")


def _write_digits(dest: Path) -> None:
    """scikit-learn's 1,797 8x8 digits as 8-bit grayscale PNGs, one folder per digit."""
    from sklearn.datasets import load_digits  # keeps scikit-learn off every other data path

    d = load_digits()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=dest.parent))
    try:
        for i, (img, y) in enumerate(zip(d.images, d.target)):
            cls = tmp / str(int(y))
            cls.mkdir(exist_ok=True)
            Image.fromarray((img * 255.0 / 16.0).round().astype(np.uint8), mode="L").save(cls / f"{i:04d}.png")
        try:
            os.rename(tmp, dest)
        except OSError:  # another process won the race
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def builtin(name: str, cache_dir: str | os.PathLike) -> Manifest:
    if name == "digits":
        dest = Path(cache_dir) / "builtin" / "digits"
        if not dest.is_dir():
            _write_digits(dest)
        return from_folder(dest, name="digits")
    if name == "clipart":
        src = PACKAGE_DATA / "clipart"
        if not src.is_dir():
            raise DataError(f"bundled clipart data missing at {src}; reinstall featcache")
        return from_folder(src, name="clipart")
    raise UnknownNameError("builtin data set", name, [f"builtin:{b}" for b in BUILTINS])


def load_manifest(data: str, *, cache_dir: str | os.PathLike, path_column: str = "path",
                  label_column: str | None = "label", root: str | None = None,
                  split_column: str | None = None, labelled: bool = True, tv_split: str = "all",
                  download: bool = False) -> Manifest:
    """Dispatch on the form of ``--data``: ``builtin:NAME``, ``torchvision:NAME``, ``*.csv``, or a folder."""
    if data.startswith("builtin:"):
        return builtin(data.split(":", 1)[1], cache_dir)
    if data.startswith("torchvision:"):
        from featcache.extraction.tvdata import from_torchvision  # torch: only torchvision data needs it

        return from_torchvision(data.split(":", 1)[1], root=root, split=tv_split, download=download)
    if data.lower().endswith(".csv"):
        return from_csv(data, path_column=path_column, label_column=label_column, root=root,
                        split_column=split_column)
    return from_folder(data, labelled=labelled)


def manifest_of(data: DataSpec, cache_dir: str | os.PathLike) -> Manifest:
    """The manifest a :class:`~featcache.specs.DataSpec` describes."""
    options = {k: getattr(data, k) for k in field_names(DataSpec) if k != "source"}
    return load_manifest(data.source, cache_dir=cache_dir, **options)
