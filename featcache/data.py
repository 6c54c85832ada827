"""Data sources -> a manifest: stable ids, paths, labels, class names, splits.

Sources:
- an image folder: one sub-folder per class (images may be nested below it),
  optionally with ``train``/``val``/``test`` split folders above the classes, or
  no class folders at all (unlabelled);
- a CSV file with a path column and an optional label column, images under a root;
- bundled data: ``builtin:digits`` (scikit-learn's digits written out once as
  PNG files) and ``builtin:clipart`` (320 public-domain clip-art images).

Images are not opened here; decoding happens in DataLoader workers.
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featcache.errors import DataError, UnknownNameError
from featcache.images import IMAGE_EXTENSIONS, FileReader

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}
BUILTINS = ("digits", "clipart")
PACKAGE_DATA = Path(__file__).parent / "data"


@dataclass
class Manifest:
    """The rows of a dataset in a stable order."""

    name: str  # short, file-name safe, e.g. "clipart" or "train-csv"
    source: str  # what the user passed
    root: str
    ids: list[str]  # paths relative to root (posix), stable and unique
    paths: list[str]  # absolute paths
    labels: np.ndarray  # int64, -1 = unlabelled
    class_names: list[str]
    split: list[str]  # "train" | "val" | "test" | ""
    ignored: list[str] = field(default_factory=list)  # non-image files seen
    digests: list[str | None] | None = None
    reader: object = None  # .load(i) -> PIL image, .digests(cache); default: the files in `paths`

    def __post_init__(self):
        if self.reader is None:
            self.reader = FileReader(self.paths)

    def compute_digests(self, digest_cache) -> list[str | None]:
        """Row keys: content digests (None = unreadable); computed once."""
        if self.digests is None:
            self.digests = self.reader.digests(digest_cache)
        return self.digests

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).any())

    def fingerprint(self) -> str:
        """Digest of everything a view holds besides the features."""
        if self.digests is None:
            raise RuntimeError("digests not computed")
        h = hashlib.sha256()
        for parts in (self.ids, [d or "-" for d in self.digests], [str(x) for x in self.labels.tolist()],
                      self.split, self.class_names):
            h.update("\x1f".join(parts).encode("utf-8", "surrogateescape"))
            h.update(b"\x1e")
        return h.hexdigest()[:16]


def safe_id(text: str) -> str:
    """A row id that is valid UTF-8: bytes of non-UTF-8 file names appear as \\xNN escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())
    return "-".join(filter(None, keep.split("-")))[:40] or "data"


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(top: Path, ignored: list[str], root: Path) -> list[str]:
    """Image files below ``top`` (sorted path strings), following symlinks and detecting loops."""
    found: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    cut = len(str(root)) + 1
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith("."):
                continue
            p = os.path.join(dirpath, f)
            if _is_image(f):
                found.append(p)
            else:
                ignored.append(safe_id(p[cut:]))
    return sorted(found)


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def from_folder(root: str | os.PathLike, *, labelled: bool = True, name: str | None = None) -> Manifest:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist; expected a folder of images "
                        "(one sub-folder per class) or a CSV file")
    if not root.is_dir():
        raise DataError(f"--data {str(root)!r} is neither a folder nor a .csv file")
    root = root.resolve()
    ignored: list[str] = []
    rows: list[tuple[str, str, str]] = []  # (path, class, split)
    top = _subdirs(root)
    split_dirs = [d for d in top if d.name.lower() in SPLIT_NAMES]
    groups = [(d, SPLIT_NAMES[d.name.lower()]) for d in split_dirs] if split_dirs and len(split_dirs) == len(top) \
        else [(root, "")]
    for base, split in groups:
        for f in sorted(x for x in base.iterdir() if x.is_file() and not x.name.startswith(".")):
            if _is_image(f.name):
                rows.append((str(f), "", split))
            else:
                ignored.append(safe_id(f.relative_to(root).as_posix()))
        for cls_dir in _subdirs(base):
            for p in _walk_images(cls_dir, ignored, root):
                rows.append((p, cls_dir.name if labelled else "", split))
    if not rows:
        raise DataError(
            f"no images found in {str(root)!r} ({len(ignored)} other files); expected image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}) in one sub-folder per class"
        )
    class_names = sorted({c for _, c, _ in rows if c})
    index = {c: i for i, c in enumerate(class_names)}
    return Manifest(
        name=name or _slug(root.name),
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


def from_csv(csv_path: str | os.PathLike, *, path_column: str = "path", label_column: str | None = "label",
             root: str | os.PathLike | None = None, split_column: str | None = None) -> Manifest:
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"CSV file {str(csv_path)!r} does not exist")
    base = Path(root).expanduser().resolve() if root else csv_path.resolve().parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col, opt in ((path_column, "--path-column"), (label_column, "--label-column"),
                         (split_column, "--split-column")):
            if col and col not in header:
                raise UnknownNameError(f"column of {csv_path.name} (set {opt})", col, header)
        records = list(reader)
    if not records:
        raise DataError(f"CSV file {str(csv_path)!r} has a header but no rows")
    ids, paths, labels, splits, missing, seen = [], [], [], [], [], set()
    for line, r in enumerate(records, start=2):
        rel = (r[path_column] or "").strip()
        if rel in seen:
            raise DataError(f"{csv_path.name} line {line}: path {rel!r} appears twice; remove the duplicate row")
        seen.add(rel)
        p = (base / rel) if not os.path.isabs(rel) else Path(rel)
        if not p.is_file():
            missing.append(rel)
        ids.append(rel)
        paths.append(str(p))
        labels.append((r[label_column] or "").strip() if label_column else "")
        splits.append(SPLIT_NAMES.get((r[split_column] or "").strip().lower(), "") if split_column else "")
    if missing:
        raise DataError(
            f"{len(missing)} of {len(ids)} files listed in {csv_path.name} are not under {str(base)!r} "
            f"(first: {missing[0]!r}); set --root to the folder the {path_column!r} column is relative to"
        )
    _check_label_types(labels, csv_path.name, label_column)
    class_names = _class_order([x for x in labels if x])
    index = {c: i for i, c in enumerate(class_names)}
    return Manifest(
        name=_slug(csv_path.stem),
        source=str(csv_path.resolve()),
        root=str(base),
        ids=ids,
        paths=paths,
        labels=np.array([index[x] if x else -1 for x in labels], dtype=np.int64),
        class_names=class_names,
        split=splits,
    )


def _write_digits(dest: Path) -> None:
    """scikit-learn's 1,797 8x8 digits as 8-bit grayscale PNGs, one folder per digit."""
    from PIL import Image
    from sklearn.datasets import load_digits

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
        from featcache.tvdata import from_torchvision

        return from_torchvision(data.split(":", 1)[1], root=root, split=tv_split, download=download)
    if data.lower().endswith(".csv"):
        return from_csv(data, path_column=path_column, label_column=label_column, root=root,
                        split_column=split_column)
    return from_folder(data, labelled=labelled)
