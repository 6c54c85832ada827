"""Where tensors run: ``--device`` and ``--precision`` resolved for this machine (imports torch)."""
from __future__ import annotations

from typing import Callable

import torch

from featcache.errors import FeatcacheError, UnknownNameError

DEVICE_EXAMPLES = ["auto", "cpu", "cuda", "cuda:0", "mps"]


def resolve_device(device: str | torch.device = "auto", *,
                   invalid: Callable[[object], Exception] | None = None) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; otherwise the named device, which must exist here.

    ``invalid(device)`` builds the error for a value that names no device (default: an
    UnknownNameError listing examples)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise (invalid(device) if invalid else UnknownNameError("device", str(device), DEVICE_EXAMPLES)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FeatcacheError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bfloat16 (or float16) AMP on CUDA, float32 elsewhere; other values as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"
