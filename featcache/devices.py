"""Where tensors run: ``--device`` and ``--precision`` resolved for this machine (imports torch)."""
from __future__ import annotations

from typing import Callable

import torch

from featcache import environment
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


_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_native(cpuinfo: str | None = None) -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    flags = set(environment.cpuinfo_field("flags", cpuinfo).split())
    return any(f in flags for f in _BF16_FLAGS)


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` multiplies bfloat16 matrices natively (a CUDA GPU that supports it,
    or a CPU with AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_bf16_native()
