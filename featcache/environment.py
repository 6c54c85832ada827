"""Where featcache keeps its store by default, and the library versions an artifact records."""
from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=1)
def cpuinfo() -> str:
    """The text of ``/proc/cpuinfo`` ('' where the system has none: macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpuinfo_field(name: str, info: str | None = None) -> str:
    """The value of the first ``name`` line of ``/proc/cpuinfo`` (or of ``info``), '' when absent."""
    for line in (cpuinfo() if info is None else info).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return ""


def x86_non_intel(info: str | None = None) -> bool:
    """True on an x86 CPU whose vendor is not Intel (AMD, Hygon, ...), read from ``/proc/cpuinfo``.

    Torch's x86 wheels multiply float32 matrices with Intel's MKL, which runs them slower there
    than numpy's OpenBLAS does (see :func:`featcache.train.heads._torch_train.numpy_gemm`)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return False
    vendor = cpuinfo_field("vendor_id", info)
    return vendor not in ("", "GenuineIntel")


#: Device files without which no CUDA (or ROCm) GPU is usable on Linux: NVIDIA's driver, WSL2's
#: GPU bridge, AMD's compute driver.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def gpu_possible() -> bool:
    """False when this machine surely has no GPU torch could use (Linux without any of
    :data:`GPU_DEVICE_FILES`), known without importing torch; True where it may have one."""
    if platform.system() != "Linux":
        return True
    return any(Path(f).exists() for f in GPU_DEVICE_FILES)


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
