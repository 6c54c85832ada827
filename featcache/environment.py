"""Where featcache keeps its store by default, and the library versions an artifact records."""
from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import numpy as np

from featcache._version import __version__


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (None when it is not installed).

    Read with :mod:`importlib.metadata`, so asking for torch's version does not import torch.
    """
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_cache_dir() -> Path:
    """``$FEATCACHE_CACHE``, else ``./cache``."""
    return Path(os.environ.get("FEATCACHE_CACHE", "cache"))


def versions() -> dict:
    """Versions of featcache and the libraries that shape its numbers (recorded in views and results)."""
    import h5py  # only when an artifact is written: `import featcache` stays light

    # torch's and torchvision's from their metadata: recording them imports neither
    return {"featcache": __version__, "torch": installed_version("torch"),
            "torchvision": installed_version("torchvision"), "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version, "numpy": np.__version__,
            "scikit-learn": installed_version("scikit-learn"), "python": platform.python_version()}
