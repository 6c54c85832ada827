#!/usr/bin/env python3
"""Build the bundled ``builtin:clipart`` data set from the Open Clip Art Library.

The Debian package ``openclipart-png`` installs the public-domain Open Clip Art
Library (release 0.18) as PNG files under ``/usr/share/openclipart/png``, one
folder per category with nested sub-folders. This script picks a small,
class-balanced, deterministic subset of it and writes it as

    <dest>/<class>/<nn>_<sanitised-original-stem>.png
    <dest>/SOURCES.csv      file,category,source_path,original_width,original_height,original_mode
    <dest>/PROVENANCE.md    source, licence, selection rule, regenerate command

Selection, per class: every regular ``*.png`` file under the class's source
folder (recursively; symbolic links are skipped, because in this package they
alias images that live in another category), sorted by their path relative to
``--source``, shuffled with ``random.Random("<seed>:<class>")``, then taken in
that order, skipping files that cannot be decoded, whose header says more than
``--max-pixels`` pixels (never decoded), that are known "Linked Image Not
Found" placeholders, that are blank or whose drawing spans less than a quarter
of the image once composited on white (tiny drawings on a page-sized canvas),
or whose resized pixels duplicate an image already picked, until
``--per-class`` are kept.

Each kept image is resized so that its longest side is at most ``--max-side``
(``Image.thumbnail`` with LANCZOS; never enlarged), keeping transparency:
palette images with a transparent index become RGBA, palette images without one
become RGB, and L / LA / RGB / RGBA stay as they are. Nothing is flattened on a
background: compositing transparency is the featcache decoder's job. Files are
saved as optimised PNG without metadata chunks.

The output is written into a temporary sibling folder and renamed over
``--dest`` at the end, so an interrupted run never leaves a half-written data
set. Two runs with the same arguments, source and Pillow/zlib produce
byte-identical files.

Regenerate the bundled copy from the repository root with::

    python scripts/make_clipart.py
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageChops

DEFAULT_SOURCE = "/usr/share/openclipart/png"
DEFAULT_DEST = "featcache/data/clipart"
# Folder paths relative to --source; the class name is the last component.
# Eight visually distinct subjects with >= 40 usable images each.
DEFAULT_CATEGORIES = (
    "animals",
    "buildings",
    "food",
    "people",
    "plants",
    "tools",
    "transportation",
    "recreation/music",
)
DEFAULT_PER_CLASS = 40
DEFAULT_MAX_SIDE = 128
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_SEED = 0
MIN_CONTENT_FRACTION = 0.25  # drawing must span >= 1/4 of the resized image's longest side
# Source files (openclipart-png 0.18) that show Inkscape's red-cross "Linked Image
# Not Found" placeholder instead of, or over, the drawing: the SVG linked a bitmap
# that was missing when the PNGs were rendered. Found by screening every regular
# file under the default categories for pure-red areas and looking at the hits.
PLACEHOLDERS = frozenset(
    [
        "animals/birds/duck_yellow_ii_kurt_cagl_.png",
        "animals/birds/penguin/tux_didier_fabert_01.png",
    ]
    + [f"people/stylized_yoga_person_ger_0{i}.png" for i in range(1, 7)]
)
MAX_NAME_CHARS = 60  # including "<nn>_" and ".png"
COPYRIGHT_FILE = "/usr/share/doc/openclipart-png/copyright"
PACKAGE = "openclipart-png"


@dataclass
class Picked:
    file: str  # relative to dest, POSIX
    category: str
    source_path: str  # relative to --source, POSIX
    width: int
    height: int
    mode: str
    data: bytes  # the encoded output PNG


def sanitise_stem(stem: str, max_chars: int) -> str:
    """ASCII, lowercase, [a-z0-9_-] only, no runs of '_', at most max_chars."""
    s = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii").lower()
    s = re.sub(r"[^a-z0-9_-]+", "_", s)
    s = re.sub(r"_+", "_", s).strip("_-")
    s = s[:max_chars].rstrip("_-")
    return s or "image"


def class_name(spec: str) -> str:
    name = spec.strip("/").split("/")[-1]
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise SystemExit(f"category {spec!r}: class name {name!r} must match [a-z0-9_-]+")
    return name


def list_candidates(source: Path, spec: str) -> list[str]:
    """Regular PNG files under source/spec (recursive, no symlinks), sorted, relative POSIX paths."""
    top = source / spec
    if not top.is_dir():
        raise SystemExit(f"category folder not found: {top}")
    out = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            if fn.lower().endswith(".png") and not p.is_symlink() and p.is_file():
                out.append(p.relative_to(source).as_posix())
    return sorted(out)


def prepare(img: Image.Image) -> Image.Image:
    """Decoded source image -> L, LA, RGB or RGBA, transparency kept."""
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "PA":
        return img.convert("RGBA")
    if img.mode in ("L", "RGB") and "transparency" in img.info:  # tRNS colour key
        return img.convert("LA" if img.mode == "L" else "RGBA")
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit or float grey -> 8 bits
        a = np.asarray(img).astype(np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGBA" if "A" in img.mode else "RGB")


def content_extent(img: Image.Image) -> int:
    """Longest side of the box around pixels that differ from white (by > 8 levels) once composited on white."""
    rgba = img.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    diff = ImageChops.difference(flat, Image.new("RGB", flat.size, (255, 255, 255)))
    r, g, b = diff.split()
    mask = ImageChops.lighter(ImageChops.lighter(r, g), b).point(lambda v: 255 if v > 8 else 0)
    box = mask.getbbox()
    return 0 if box is None else max(box[2] - box[0], box[3] - box[1])


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def process(path: Path, max_side: int, max_pixels: int) -> tuple[Image.Image | None, tuple, str]:
    """-> (resized image or None, (w, h, mode) of the original, skip reason or '')."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
            if w * h > max_pixels:
                return None, (w, h, mode), "too_large"
            if w < 1 or h < 1:
                return None, (w, h, mode), "unreadable"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
                img = prepare(im)
                if img is im:
                    img = im.copy()
    except Exception:  # noqa: BLE001 - any decode failure just skips the file
        return None, (0, 0, ""), "unreadable"
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    extent = content_extent(img)
    if extent == 0:
        return None, (w, h, mode), "blank"
    if extent < MIN_CONTENT_FRACTION * max(img.size):
        return None, (w, h, mode), "mostly_empty"
    return img, (w, h, mode), ""


def select(source: Path, specs: list[str], per_class: int, max_side: int, max_pixels: int, seed: int):
    picked: list[Picked] = []
    skipped: dict[str, dict[str, int]] = {}
    seen_pixels: set[str] = set()
    for spec in specs:
        name = class_name(spec)
        cands = list_candidates(source, spec)
        random.Random(f"{seed}:{name}").shuffle(cands)
        reasons = {"placeholder": 0, "too_large": 0, "unreadable": 0, "blank": 0, "mostly_empty": 0, "duplicate": 0}
        kept = 0
        for rel in cands:
            if kept >= per_class:
                break
            if rel in PLACEHOLDERS:
                reasons["placeholder"] += 1
                continue
            img, (w, h, mode), why = process(source / rel, max_side, max_pixels)
            if img is None:
                reasons[why] += 1
                continue
            digest = hashlib.sha256(img.mode.encode() + repr(img.size).encode() + img.tobytes()).hexdigest()
            if digest in seen_pixels:
                reasons["duplicate"] += 1
                continue
            seen_pixels.add(digest)
            prefix = f"{kept:02d}_"
            stem = sanitise_stem(Path(rel).stem, MAX_NAME_CHARS - len(prefix) - len(".png"))
            picked.append(Picked(f"{name}/{prefix}{stem}.png", name, rel, w, h, mode, encode_png(img)))
            kept += 1
        if kept < per_class:
            raise SystemExit(
                f"category {spec!r}: only {kept} usable images of {len(cands)} candidates, need {per_class}"
            )
        skipped[name] = reasons
    return picked, skipped


def package_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True, text=True, check=True
        ).stdout.strip()
        return out or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def licence_line() -> str:
    try:
        text = Path(COPYRIGHT_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "creative commons Public Domain Dedication"
    for line in text.splitlines():
        if "public domain dedication" in line.lower():
            return line.strip()
    return "creative commons Public Domain Dedication"


def regenerate_command(args: argparse.Namespace, specs: list[str]) -> str:
    parts = ["python scripts/make_clipart.py", f"--source {args.source}", f"--dest {args.dest}"]
    parts.append("--categories " + " ".join(specs))
    parts += [
        f"--per-class {args.per_class}",
        f"--max-side {args.max_side}",
        f"--max-pixels {args.max_pixels}",
        f"--seed {args.seed}",
    ]
    return " \\\n    ".join(parts)


def provenance(args, specs, picked, skipped, total_bytes) -> str:
    version = package_version()
    counts = {}
    modes: dict[str, int] = {}
    for p in picked:
        counts[p.category] = counts.get(p.category, 0) + 1
        modes[p.mode] = modes.get(p.mode, 0) + 1
    rows = "\n".join(
        f"| {class_name(s)} | `{s}` | {counts.get(class_name(s), 0)} | "
        + ", ".join(f"{k} {v}" for k, v in skipped[class_name(s)].items() if v)
        + " |"
        for s in specs
    )
    mode_list = ", ".join(f"{m} {n}" for m, n in sorted(modes.items()))
    return f"""# builtin:clipart — provenance

{len(picked)} small PNG images in {len(specs)} classes ({args.per_class} per class), a subset of the
**Open Clip Art Library** as packaged by Debian in `{PACKAGE}` (version `{version}`,
installed under `{args.source}`; upstream http://www.openclipart.org).

## Licence

Public domain. `{COPYRIGHT_FILE}` states:

> {licence_line()}

followed by the Copyright-Only Dedication / Public Domain Certification text: the
dedicator "hereby [...] dedicates whatever copyright the dedicators holds in the work of
authorship identified below (the "Work") to the public domain", and "once placed in the
public domain, the Work may be freely reproduced, distributed, transmitted, used,
modified, built upon, or otherwise exploited by anyone for any purpose, commercial or
non-commercial". (This is Creative Commons' older Public Domain Dedication, not CC0
1.0, with the same intent.) Each source PNG carries its title and author in
`tEXt` chunks; the resized copies here carry no metadata, their origin is in
`SOURCES.csv`.

## How the subset was chosen

For each class, every regular `*.png` file under the class's source folder,
recursively through nested sub-folders, is a candidate. Symbolic links are skipped:
in this package they alias images filed under another category (about 1,200 of
the 8,121 `.png` entries). The candidates are sorted by their path relative to the
source root and shuffled with Python's `random.Random("<seed>:<class>")`; they are
then taken in that order, skipping

- files whose PNG header says more than {args.max_pixels:,} pixels (read with
  `PIL.Image.open(...).size`, never decoded; the largest source image is 623 megapixels),
- files that fail to decode,
- eight source files that show Inkscape's red-cross "Linked Image Not Found"
  placeholder instead of (or over) the drawing: `animals/birds/duck_yellow_ii_kurt_cagl_.png`,
  `animals/birds/penguin/tux_didier_fabert_01.png`,
  `people/stylized_yoga_person_ger_01.png` … `_06.png` (the list in the script
  was made by screening the default categories),
- images that are blank once resized and composited on white (no pixel differs
  from white by more than 8 levels), or whose drawing spans less than a quarter of
  the resized image's longest side (a small drawing on a page-sized canvas),
- images whose resized pixels equal those of an image already picked (any class),

until {args.per_class} are kept.

| class | source folder | images | skipped on the way |
|---|---|---|---|
{rows}

## How the images were converted

Resized with Pillow `Image.thumbnail((max_side, max_side), LANCZOS)` so the
longest side is at most {args.max_side} px (smaller images are not enlarged).
Transparency is kept, not flattened: palette images with a transparent index
become RGBA, palette images without one become RGB, L / LA / RGB / RGBA keep their
mode. Saved as optimised PNG, file name `<nn>_<sanitised original stem>.png`
(`nn` = position in the selection order; the stem is ASCII, lowercase, `[a-z0-9_-]`).
Modes of the originals picked: {mode_list}. Total size of the PNG files: {total_bytes:,} bytes.

`SOURCES.csv` lists every file with its class, its source path relative to
`{args.source}`, and the original width, height and PIL mode.

## Regenerate

From the repository root, with `{PACKAGE}` installed and Pillow available:

```
{regenerate_command(args, specs)}
```

The output is deterministic for a given package version, Pillow and zlib
(this copy: Pillow {PIL.__version__}, zlib {zlib.ZLIB_RUNTIME_VERSION}).
"""


def write_tree(tmp: Path, picked: list[Picked], text: str) -> None:
    tmp.mkdir(parents=True)
    for p in picked:
        out = tmp / p.file
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(p.data)
    with open(tmp / "SOURCES.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "category", "source_path", "original_width", "original_height", "original_mode"])
        for p in picked:
            w.writerow([p.file, p.category, p.source_path, p.width, p.height, p.mode])
    (tmp / "PROVENANCE.md").write_text(text, encoding="utf-8")


def replace_dir(tmp: Path, dest: Path) -> None:
    """Rename tmp over dest; the old dest (if any) is moved aside first, then removed."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=DEFAULT_SOURCE, help="openclipart PNG root (default: %(default)s)")
    ap.add_argument("--dest", default=DEFAULT_DEST, help="output folder, replaced (default: %(default)s)")
    ap.add_argument(
        "--categories",
        nargs="+",
        default=list(DEFAULT_CATEGORIES),
        metavar="FOLDER",
        help="category folders relative to --source; the class is the last path component "
        "(default: %(default)s)",
    )
    ap.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS, help="images per class (default: %(default)s)")
    ap.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="longest side in px (default: %(default)s)")
    ap.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="skip sources whose header says more pixels (default: %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="shuffle seed (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="replace --dest even if it is not a previous output")
    args = ap.parse_args(argv)

    source, dest = Path(args.source), Path(args.dest)
    specs = [s.strip("/") for s in args.categories]
    names = [class_name(s) for s in specs]
    if len(set(names)) != len(names):
        raise SystemExit(f"class names must be unique: {names}")
    if args.per_class < 1 or args.max_side < 1:
        raise SystemExit("--per-class and --max-side must be positive")
    if not source.is_dir():
        raise SystemExit(f"source folder not found: {source} (apt-get install {PACKAGE})")
    if dest.exists() and not args.force:
        if not dest.is_dir() or (any(dest.iterdir()) and not (dest / "PROVENANCE.md").is_file()):
            raise SystemExit(f"{dest} exists and is not a previous output of this script; use --force")
    Image.MAX_IMAGE_PIXELS = max(args.max_pixels, Image.MAX_IMAGE_PIXELS or 0)

    picked, skipped = select(source, specs, args.per_class, args.max_side, args.max_pixels, args.seed)
    total = sum(len(p.data) for p in picked)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write_tree(tmp, picked, provenance(args, specs, picked, skipped, total))
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    print(f"wrote {len(picked)} images to {dest}")
    for name in names:
        files = [p for p in picked if p.category == name]
        nbytes = sum(len(p.data) for p in files)
        skips = ", ".join(f"{k} {v}" for k, v in skipped[name].items() if v) or "none"
        print(f"  {name:<16} {len(files):>3} images {nbytes:>9,} bytes  (skipped: {skips})")
    print(f"  total            {len(picked):>3} images {total:>9,} bytes ({total / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
