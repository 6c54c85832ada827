"""The bundled ``builtin:clipart`` images (featcache/data/clipart) and the script that makes them."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
CLIPART = ROOT / "featcache" / "data" / "clipart"
SCRIPT = ROOT / "scripts" / "make_clipart.py"
SOURCE = Path("/usr/share/openclipart/png")
CLASSES = {"animals", "buildings", "food", "music", "people", "plants", "tools", "transportation"}
PER_CLASS = 40
MAX_SIDE = 128
COLUMNS = ["file", "category", "source_path", "original_width", "original_height", "original_mode"]
NAME = re.compile(r"^\d{2}_[a-z0-9_-]+\.png$")

needs_source = pytest.mark.skipif(
    not SOURCE.is_dir(),
    reason=f"{SOURCE} is absent: the Debian package openclipart-png is not installed "
    "(apt-get install openclipart-png)",
)


def _pngs() -> list[Path]:
    return sorted(CLIPART.glob("*/*.png"))


def _sources() -> list[dict]:
    with open(CLIPART / "SOURCES.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_eight_classes_of_forty_pngs():
    classes = {p.name for p in CLIPART.iterdir() if p.is_dir()}
    assert classes == CLASSES
    for c in CLASSES:
        files = sorted(p.name for p in (CLIPART / c).iterdir())
        assert len(files) == PER_CLASS, c
        assert all(NAME.match(f) and len(f) <= 60 for f in files), c
        assert [f[:2] for f in files] == [f"{i:02d}" for i in range(PER_CLASS)], c
    others = {p.name for p in CLIPART.iterdir() if not p.is_dir()}
    assert others == {"PROVENANCE.md", "SOURCES.csv"}


def test_every_png_opens_small_and_keeps_transparency_modes():
    pngs = _pngs()
    assert len(pngs) == len(CLASSES) * PER_CLASS
    modes = set()
    for p in pngs:
        with Image.open(p) as img:
            assert img.format == "PNG", p
            img.load()  # decodes fully; raises on a truncated file
            assert max(img.size) <= MAX_SIDE and min(img.size) >= 1, (p, img.size)
            assert img.mode in {"L", "LA", "RGB", "RGBA"}, (p, img.mode)
            modes.add(img.mode)
    # transparency is kept for the decoder to composite, not flattened here
    assert modes & {"LA", "RGBA"}


def test_sources_csv_lists_every_file():
    rows = _sources()
    listed = [r["file"] for r in rows]
    on_disk = [p.relative_to(CLIPART).as_posix() for p in _pngs()]
    assert sorted(listed) == on_disk and len(set(listed)) == len(listed)
    for r in rows:
        assert r["file"].split("/")[0] == r["category"]
        assert r["source_path"].endswith(".png") and not r["source_path"].startswith("/")
        assert int(r["original_width"]) >= 1 and int(r["original_height"]) >= 1
        assert r["original_mode"]
    assert len({r["source_path"] for r in rows}) == len(rows)


def test_provenance_exists():
    text = (CLIPART / "PROVENANCE.md").read_text(encoding="utf-8")
    assert "openclipart-png" in text
    assert "Public Domain Dedication" in text
    assert "python scripts/make_clipart.py" in text


def test_sanitise_stem():
    mod = load_script(SCRIPT)
    assert mod.sanitise_stem("Héllo Wörld!!_01", 50) == "hello_world_01"
    assert mod.sanitise_stem("a.b.c", 50) == "a_b_c"
    assert mod.sanitise_stem("___", 50) == "image"
    assert len(mod.sanitise_stem("x" * 200, 40)) == 40


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(dest: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(SOURCE), "--dest", str(dest), "--per-class", "3", *extra],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )


@needs_source
def test_script_is_deterministic(tmp_path):
    dest = tmp_path / "clipart"
    out = _run(dest)
    assert "total" in out.stdout
    first = _snapshot(dest)
    assert sum(name.endswith(".png") for name in first) == len(CLASSES) * 3
    assert {"PROVENANCE.md", "SOURCES.csv"} <= set(first)

    _run(dest)  # second run replaces the first one in place
    assert _snapshot(dest) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clipart"]  # no temporary folders left

    # the selection is a prefix of the bundled one (same seed, same order)
    picked = {}
    with open(dest / "SOURCES.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            picked[r["file"]] = r["source_path"]
    bundled = {r["file"]: r["source_path"] for r in _sources()}
    if "1:0.18" not in (CLIPART / "PROVENANCE.md").read_text(encoding="utf-8"):
        pytest.skip("bundled copy was made from another openclipart-png version")
    assert picked == {k: bundled[k] for k in picked}


@needs_source
def test_script_refuses_to_replace_a_foreign_folder(tmp_path):
    dest = tmp_path / "precious"
    dest.mkdir()
    (dest / "keep.txt").write_text("x")
    with pytest.raises(subprocess.CalledProcessError):
        _run(dest, "--categories", "animals")
    assert (dest / "keep.txt").read_text() == "x"


def test_script_help_runs():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    for opt in ("--source", "--dest", "--categories", "--per-class", "--max-side", "--seed"):
        assert opt in out.stdout
