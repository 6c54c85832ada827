"""Row blocks of a feature matrix in float32, column statistics, and memory-sized chunks.

The linear, kNN and ncm heads read their training matrix only through :class:`FeatureBlocks`:
an in-memory float32 matrix is sliced (no copy), any other in-memory matrix is converted to
float32 once (half the size of a float64 input), and a lazy array (``h5py.Dataset``,
``np.memmap``, see :func:`featcache.train.heads.base.is_lazy`) is read block by block on every
pass, so a view larger than memory can be trained on. Nothing here makes a float64 copy of the
whole matrix.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np

from featcache.environment import usable_cores
from featcache.train.heads.base import block_rows, check_finite, is_lazy, read_block

#: Rows per block of an in-memory matrix: small enough that per-block temporaries stay a few MB.
MEMORY_BLOCK_ROWS = 4096
#: Fraction of the available memory a chunked computation (kNN similarities) may use.
MEMORY_FRACTION = 0.125
#: Never plan chunks larger than this, whatever the machine has available.
MAX_CHUNK_BYTES = 512 * 2**20


class FeatureBlocks:
    """Iterate ``(start, stop, float32 block)`` over the rows of ``X`` (array or lazy array)."""

    def __init__(self, X: Any, n_features: int, *, rows: int | None = None):
        self.lazy = is_lazy(X)
        self.n_features = int(n_features)
        if not self.lazy:
            X = np.asarray(X)
            if X.dtype != np.float32 or not X.flags.c_contiguous:
                X = np.ascontiguousarray(X, dtype=np.float32)
        self.X = X
        self.n = int(X.shape[0])
        default = block_rows(n_features) if self.lazy else MEMORY_BLOCK_ROWS
        self.rows = max(1, int(rows or default))
        self.checked = False  # a lazy matrix's blocks were all read (and checked) once

    def spans(self) -> list[tuple[int, int]]:
        """The ``(start, stop)`` of every block, in order."""
        return [(start, min(self.n, start + self.rows)) for start in range(0, self.n, self.rows)]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` in float32; a lazy matrix's are looked at for NaN/inf until one
        whole pass over it has been read (:meth:`__iter__` to its end), not after."""
        if self.lazy:
            return read_block(self.X, start, stop, n_features=self.n_features, check=not self.checked)
        return self.X[start:stop]

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        for start, stop in self.spans():
            yield start, stop, self.read(start, stop)
        self.checked = True

    def check_finite(self) -> None:
        """Raise :class:`~featcache.train.heads.base.HeadInputError` on NaN/inf (blockwise)."""
        if self.lazy:
            for _ in self:  # read_block checks every block
                pass
            return
        for start, _, block in self:
            check_finite(block, offset=start)


class RunningMoments:
    """Column mean and (population) variance merged block by block in float64.

    Chan, Golub & LeVeque's pairwise update: exact to float64 rounding for any block order.
    """

    def __init__(self, n_features: int):
        self.count = 0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def add(self, block: np.ndarray) -> None:
        nb = len(block)
        if nb == 0:
            return
        centred = block.astype(np.float64)  # one block in float64, never the whole matrix
        mean = centred.mean(axis=0)
        centred -= mean
        self._combine(nb, mean, np.einsum("ij,ij->j", centred, centred))

    def merge(self, other: "RunningMoments") -> None:
        """Fold in the moments of other rows (the same pairwise update as :meth:`add`)."""
        if other.count:
            self._combine(other.count, other.mean, other.m2)

    def _combine(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        delta, total = mean - self.mean, self.count + count
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def mean_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)``; a std that is zero up to rounding becomes 1 (as StandardScaler)."""
        scale = np.sqrt(self.m2 / max(self.count, 1))
        scale[scale < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(self.mean), 1.0)] = 1.0
        return self.mean.copy(), scale


#: An in-memory matrix's column statistics are summed over this many parts of its blocks
#: (every STATS_PARTS-th block), in parallel, then merged in a fixed order: the same numbers
#: whatever the thread count.
STATS_PARTS = 8


def column_stats(blocks: FeatureBlocks) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and standard deviation of every row of ``blocks`` (one pass).

    In memory, the parts run on the usable cores (numpy releases the GIL: on 2 cores 51,000 x
    1,280 rows take 0.08 instead of 0.13 s); a lazy matrix is read block by block in order."""
    if blocks.lazy:
        moments = RunningMoments(blocks.n_features)
        for _, _, block in blocks:
            moments.add(block)
        return moments.mean_scale()
    starts = list(range(0, blocks.n, blocks.rows))
    parts = [starts[i::STATS_PARTS] for i in range(STATS_PARTS)]  # interleaved: equal shares
    parts = [p for p in parts if p]

    def moments_of(part: list[int]) -> RunningMoments:
        moments = RunningMoments(blocks.n_features)
        for start in part:
            moments.add(blocks.X[start : start + blocks.rows])
        return moments

    threads = min(len(parts), usable_cores())
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(moments_of, parts))
    else:
        results = [moments_of(p) for p in parts]
    total = RunningMoments(blocks.n_features)
    for moments in results:
        total.merge(moments)
    return total.mean_scale()


def available_bytes() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` (4 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def chunk_rows(bytes_per_row: int, *, least: int = 1, available: int | None = None) -> int:
    """Rows per chunk so that a chunk takes at most a fraction of the available memory
    (``available`` bytes, e.g. a GPU's free memory; default: this machine's)."""
    budget = min(MAX_CHUNK_BYTES, int((available_bytes() if available is None else available) * MEMORY_FRACTION))
    return max(int(least), budget // max(int(bytes_per_row), 1))
