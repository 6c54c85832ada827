"""How a ``--weights`` value is read, decided without torch: a file path, or a name.

Shared by the registry (which resolves the weights) and the pipeline schema (which checks
them while parsing, before anything imports torch).
"""
from __future__ import annotations

import os

#: suffixes that make a weights value a file path even without a folder in it
WEIGHTS_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` names a weights file rather than a weights name (DEFAULT, none, IMAGENET1K_V1...)."""
    return os.sep in spec or "/" in spec or spec.endswith(WEIGHTS_FILE_SUFFIXES) or os.path.exists(spec)
