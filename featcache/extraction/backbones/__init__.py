"""Backbones: the registry (``registry.py``) and one module per source, registered here.

A source is a module with a ``register()`` function that registers its entries with
:func:`~featcache.extraction.backbones.registry.register_backbone`; :data:`SOURCES` lists
them (a new source adds one line there). Every lookup loads them all first.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

from torchvision import __version__ as torchvision_version

from featcache._version import __version__
from featcache.atomic import atomic_path
from featcache.extraction.backbones import lite0
from featcache.extraction.backbones import torchvision as torchvision_source
from featcache.extraction.backbones.registry import BackboneEntry, registered, registered_names
from featcache.extraction.backbones.shapes import skeleton
from featcache.extraction.layers import penultimate_dim

#: every source of backbones; each ``register()`` adds the entries not registered yet
SOURCES = (torchvision_source.register, lite0.register)


@functools.cache
def load_sources() -> None:
    """Register every source's backbones (once)."""
    for register in SOURCES:
        register()


def list_backbones() -> list[str]:
    load_sources()
    return registered_names()


def get_backbone(name: str) -> BackboneEntry:
    load_sources()
    return registered(name)


def describe_all(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """name, source, penultimate dim, default weights and weights names of every backbone.

    Dims need each architecture built (on the meta device, no weights); the table is
    cached per torchvision version under ``cache_dir`` when one is given.
    """
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f".backbones-{__version__}-tv{torchvision_version}.json"
        if cache_file.is_file():
            try:
                rows = json.loads(cache_file.read_text())
                if [r["name"] for r in rows] == list_backbones():
                    return rows
            except (ValueError, KeyError, TypeError):
                pass
    rows = []
    for name in list_backbones():
        entry = get_backbone(name)
        rows.append(
            {
                "name": name,
                "source": entry.source,
                "dim": penultimate_dim(skeleton(entry)),
                "default_weights": entry.default_weights(),
                "weights": entry.weights_names(),
            }
        )
    if cache_file is not None:
        with contextlib.suppress(OSError), atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps(rows))
    return rows
