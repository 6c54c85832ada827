"""Backbones: the registry (``registry.py``) and one module per source, registered here.

A source is a module with a ``register()`` function that registers its entries with
:func:`~featcache.extraction.backbones.registry.register_backbone`, or, for a source of many
names made into entries only when asked for (timm), a
:class:`~featcache.extraction.backbones.registry.BackboneSource`; :data:`SOURCES` lists
them (a new source adds one line there). Every lookup loads them all first.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import os
from pathlib import Path

from featcache._version import __version__
from featcache.atomic import atomic_path
from featcache.environment import installed_version
from featcache.errors import FeatcacheError, UnknownNameError
from featcache.extraction.backbones import lite0
from featcache.extraction.backbones import timm as timm_source
from featcache.extraction.backbones import torchvision as torchvision_source
from featcache.extraction.backbones.registry import (
    BackboneEntry,
    registered,
    registered_names,
    registered_sources,
)
from featcache.extraction.backbones.shapes import skeleton
from featcache.extraction.layers import penultimate_dim

#: every source of backbones; each ``register()`` adds the entries not registered yet
SOURCES = (torchvision_source.register, lite0.register, timm_source.register)


@functools.cache
def load_sources() -> None:
    """Register every source's backbones (once)."""
    for register in SOURCES:
        register()


def list_backbones() -> list[str]:
    """Registered names, then every name of the lazily listed sources (timm: imports timm)."""
    load_sources()
    return registered_names() + [n for s in registered_sources() for n in sorted(s.names())]


def get_backbone(name: str) -> BackboneEntry:
    load_sources()
    return registered(name)


def describe_all(cache_dir: str | os.PathLike | None = None, *, source: str | None = None,
                 match: str | None = None, dims: bool = False) -> list[dict]:
    """name, source, penultimate dim, default weights and weights names of every backbone.

    ``source`` keeps one source's rows (e.g. ``torchvision``, ``timm``); ``match`` keeps names
    containing it (or matching it, when it has ``*?[``). Rows of a lazily listed source (timm) get
    their dim when they number at most a few dozen, or with ``dims=True``; else ``None``.
    """
    load_sources()
    eager = {get_backbone(n).source for n in registered_names()}
    valid = eager | {s.name for s in registered_sources()}
    if source is not None and source not in valid:
        raise UnknownNameError("backbone source", source, valid)
    rows = []
    if source is None or source in eager:
        rows = [r for r in _describe_registered(cache_dir)
                if source in (None, r["source"]) and name_matches(r["name"], match)]
    for src in registered_sources():
        if source == src.name and src.missing():
            raise FeatcacheError(src.missing())
        if source in (None, src.name):
            rows += src.describe(cache_dir, [n for n in sorted(src.names()) if name_matches(n, match)], dims)
    return rows


def name_matches(name: str, pattern: str | None) -> bool:
    """``pattern`` None matches all; with ``*?[`` a glob (fnmatch) of the name with or without its
    source prefix (``timm:``), else a substring; both ignore case."""
    if not pattern:
        return True
    name, pattern = name.lower(), pattern.lower()
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name.partition(":")[2], pattern)
    return pattern in name


def _describe_registered(cache_dir: str | os.PathLike | None) -> list[dict]:
    """Rows of the registered backbones. Dims need each architecture built (on the meta device, no
    weights); the table is cached per torchvision version under ``cache_dir`` when one is given."""
    names = registered_names()
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f".backbones-{__version__}-tv{installed_version('torchvision')}.json"
        if cache_file.is_file():
            try:
                rows = json.loads(cache_file.read_text())
                if [r["name"] for r in rows] == names:
                    return rows
            except (ValueError, KeyError, TypeError):
                pass
    rows = []
    for name in names:
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
