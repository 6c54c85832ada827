"""Shared fixtures: tiny generated image folders and a temporary store. No network."""
from __future__ import annotations

import importlib.util
import sys

from pathlib import Path

import numpy as np
import pytest
from PIL import Image



def load_script(path: Path):
    """A script of the repository (benchmarks/, scripts/) as a module, without running its main:
    registered in ``sys.modules`` while it executes (dataclasses look their module up there),
    with its own folder on ``sys.path`` (for helper modules beside it, e.g. benchmarks/_bench)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(str(path.parent))
    return mod


def make_image(path: Path, seed: int, size=(40, 32), mode="RGB", fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def unlabelled_and_single_class(root: Path) -> None:
    """root/u: 4 loose images (no class folders); root/one/only: 4 images of a single class."""
    for i in range(4):
        make_image(root / "u" / f"{i}.png", seed=i)
        make_image(root / "one" / "only" / f"{i}.png", seed=10 + i)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """root/<cat|dog>/img_i.png, 6 per class, with one nested sub-folder and a stray text file."""
    root = tmp_path / "pets"
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(6):
            sub = root / cls / ("nested" if i == 5 else "")
            make_image(sub / f"img_{i}.png", seed=100 * c + i)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"
