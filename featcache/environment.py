"""Where featcache keeps its store by default, and the library versions an artifact records."""
from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path

import numpy as np

from featcache._version import __version__


def default_cache_dir() -> Path:
    """``$FEATCACHE_CACHE``, else ``./cache``."""
    return Path(os.environ.get("FEATCACHE_CACHE", "cache"))


def versions() -> dict:
    """Versions of featcache and the libraries that shape its numbers (recorded in views and results)."""
    import h5py  # these three only when an artifact is written: `import featcache` stays light
    import torch
    import torchvision

    return {"featcache": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "numpy": np.__version__,
            "scikit-learn": version("scikit-learn"), "python": platform.python_version()}
