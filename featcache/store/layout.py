"""Where things lie in a store folder, without opening anything (no h5py to import).

``featcache results`` only reads the results log; knowing its path must not cost the
HDF5 library's import. :class:`featcache.store.featureset.FeatureStore` uses these too.
"""
from __future__ import annotations

import os
from pathlib import Path

from featcache.environment import default_cache_dir

RESULTS_LOG = "results.jsonl"


def store_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The store folder: ``cache_dir``, else :func:`featcache.environment.default_cache_dir`."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def results_log(cache_dir: str | os.PathLike | None = None) -> Path:
    """The results log of stage two (one JSON line per fit) of the store at ``cache_dir``."""
    return store_root(cache_dir) / RESULTS_LOG
