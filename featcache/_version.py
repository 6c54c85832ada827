"""The package version, in a module of its own so that any layer can import it; and the
installed versions of other distributions, read from their metadata (no import of them)."""
from __future__ import annotations

import importlib.metadata

__version__ = "0.1.0"


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (None when it is not installed).

    Read with :mod:`importlib.metadata`, so asking for torch's version does not import torch.
    """
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
