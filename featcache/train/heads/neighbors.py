"""Blockwise cosine nearest neighbours and class means.

:class:`CosineSearch` (:func:`top_k_cosine` for one matrix of queries) multiplies chunks of
queries by the unit-norm training matrix (one bfloat16 or float32 product per chunk) and keeps the
best candidates of each row, re-scored exactly in float64; a chunk's similarity matrix is sized from the available memory
(:func:`featcache.train.heads.blocks.chunk_rows`), so the full (queries x training rows)
matrix never exists. The candidate search uses torch only for searches of at least
``TORCH_MIN_WORK`` multiply-adds, where it saves more than importing torch costs, and multiplies
in bfloat16 only where the device does so natively (:func:`featcache.devices.native_bf16`: a CPU
without AVX512-BF16 or AMX emulates it, ~75x slower than float32 on a 2-core AVX2 EPYC); smaller
ones use numpy float32, so stage two on small data never loads torch. :func:`vote` turns neighbours into
class probabilities exactly as scikit-learn's ``KNeighborsClassifier`` (``uniform`` or
``distance`` weights, exact matches taking all the weight).
"""
from __future__ import annotations

import contextlib

import numpy as np

from featcache.train.heads._torch_train import device_free_bytes, numpy_gemm, products_device
from featcache.train.heads.blocks import FeatureBlocks, chunk_rows


def normalize_rows(block: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """``block`` (minus ``center``) with rows scaled to unit L2 norm, in ``block``'s dtype."""
    out = block - center.astype(block.dtype) if center is not None else block.copy()
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    out /= np.maximum(norms, 1e-12)[:, None]
    return out


def normalized_copy(blocks: FeatureBlocks) -> np.ndarray:
    """The unit-norm rows of ``blocks`` as one float32 matrix (the kNN head's training data)."""
    out = np.empty((blocks.n, blocks.n_features), dtype=np.float32)
    for start, stop, block in blocks:
        out[start:stop] = normalize_rows(block)
    return out


#: Candidates the search keeps beyond ``k`` at first. Of them only those within the search's
#: error bound of the k-th best (:func:`search_error`) are re-scored; a row whose band fills
#: all of them is searched again with :data:`WIDEN` times as many, so no neighbour is lost.
RERANK_MARGIN = 32
WIDEN = 4
#: multiply-adds from which the candidate search uses torch (numpy float32 would take ~4 s here,
#: about what importing torch costs; benchmarks/README.md has the measured speeds)
TORCH_MIN_WORK = 20_000_000_000
_RERANK_ROWS = 128
_TRANSPOSE_ROWS = 1024
#: Most bytes of training rows gathered at once for the exact re-scoring.
RERANK_BYTES = 64 * 2**20

_U_BF16, _U_F32 = 2.0**-9, 2.0**-24  # unit roundoffs (round to nearest)


def search_error(n_features: int, bfloat16: bool) -> float:
    """Bound on ``|approximate - exact|`` cosine similarity of two unit rows of ``n_features``.

    Float32 sums of ``n_features`` products are off by at most ``n_features * u32`` of the sum of
    their magnitudes, itself at most 1 for unit rows (Cauchy-Schwarz). A bfloat16 search also
    rounds both inputs (``2 u16``, plus ``u16**2``) and its result (``u16``, torch's CPU product
    returns bfloat16). Twice the float32 term and the slack cover rows whose norm is 1 only to
    float32 rounding.
    """
    accumulate = 2.0 * (n_features + 2) * _U_F32
    if bfloat16:
        return 3.0 * _U_BF16 + 2.0 * _U_BF16**2 + accumulate + 2.0**-20
    return accumulate + 4.0 * _U_F32


def top_k_cosine(queries: np.ndarray, train: np.ndarray, k: int,
                 device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Indices (m, k) and cosine similarities (m, k) of the ``k`` most similar rows of
    ``train`` (unit rows) for each unit row of ``queries``, most similar first: one
    :class:`CosineSearch` of ``queries``."""
    return CosineSearch(train, device, n_queries=len(queries)).top_k(queries, k)


class CosineSearch:
    """Exact cosine k-nearest-neighbour search of query blocks in the unit rows of ``train``.

    The search is one matrix product per chunk of queries: numpy float32, or for searches of
    ``TORCH_MIN_WORK`` multiply-adds and more (``n_queries`` rows in all) torch with its top-k, in
    bfloat16 where the device multiplies it natively (AMX / AVX-512 BF16 CPUs, recent GPUs), else
    float32 (numpy's product on x86 CPUs not made by Intel, where torch's MKL is slower:
    :func:`~featcache.train.heads._torch_train.numpy_gemm`). Its best candidates are re-scored exactly
    in float64: every row whose approximate similarity is within twice :func:`search_error` of
    the approximate k-th best, which provably holds the exact k best (a row whose band reaches
    past its candidates takes more). So the answer equals an exact search, does not depend on
    which other rows share a chunk or a block, and ties go to the lower index.
    ``device``: where torch's search runs ('auto': CUDA when there is one; a GPU named
    explicitly is used whatever the size; see
    :func:`featcache.train.heads._torch_train.products_device`); the training matrix is copied
    there (transposed, in the search's dtype) once, at the first block, and each chunk's similarities are
    sized from that device's free memory.
    """

    def __init__(self, train: np.ndarray, device: str = "auto", *, n_queries: int):
        self.train = train
        self.device = products_device(device, n_queries * len(train) * train.shape[1], TORCH_MIN_WORK)
        self.bfloat16 = self.device is not None and _native_bf16(self.device)
        self.band = 2.0 * search_error(train.shape[1], bfloat16=self.bfloat16)
        self._search = None

    def top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and similarities (``len(queries)``, k) of one block of unit query rows."""
        train = self.train
        m, n = len(queries), len(train)
        idx = np.empty((m, k), dtype=np.int64)
        sims = np.empty((m, k), dtype=np.float64)
        if self._search is None:
            self._search = (_numpy_candidates(train) if self.device is None
                            else _torch_candidates(train, self.device, self.bfloat16))
        free = None if self.device is None else device_free_bytes(self.device)
        step = chunk_rows(n * 2 * 3, least=_RERANK_ROWS, available=free)
        for a in range(0, m, step):
            q = queries[a : a + step]
            for rows, cand, width in _banded_candidates(self._search, q, n, k, self.band):
                r = 0
                while r < len(rows):  # blocks of rows whose gathered candidates fit RERANK_BYTES
                    w = int(width[min(len(rows), r + _RERANK_ROWS) - 1])  # rows are sorted by width
                    stop = r + max(1, min(_RERANK_ROWS, RERANK_BYTES // (w * train.shape[1] * train.itemsize)))
                    w = int(width[min(len(rows), stop) - 1])
                    i_k, s_k = _rerank(q[rows[r:stop]], train, cand[r:stop, :w], k)
                    idx[a + rows[r:stop]], sims[a + rows[r:stop]] = i_k, s_k
                    r = stop
        return idx, sims


def _banded_candidates(search, q: np.ndarray, n: int, k: int, band: float):
    """Groups ``(rows, cand, width)`` of the chunk ``q``: candidate indices by decreasing
    approximate similarity and how many of them each row must re-score (those within ``band``
    of its k-th best), rows ordered by that width so that a block of rows re-scores alike.
    A row whose band fills its candidates takes WIDEN times as many from the same similarities."""
    top = search(q)
    rows, c = np.arange(len(q)), min(n, k + RERANK_MARGIN)
    while len(rows):
        cand, approx = top(rows, c)
        width = (approx >= approx[:, k - 1 : k] - band).sum(axis=1)
        done = width < c if c < n else np.ones(len(rows), dtype=bool)
        order = np.argsort(width[done], kind="stable")
        yield rows[done][order], cand[done][order], width[done][order]
        rows, c = rows[~done], min(n, c * WIDEN)


def _numpy_candidates(train: np.ndarray):
    """Candidate search by a float32 product and ``argpartition`` (no torch to import)."""
    train32 = np.ascontiguousarray(train, dtype=np.float32)

    def search(q: np.ndarray):
        sims = np.ascontiguousarray(q, dtype=np.float32) @ train32.T

        def top(rows: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
            s = sims if len(rows) == len(sims) else sims[rows]
            cand = np.argpartition(-s, c - 1, axis=1)[:, :c] if c < s.shape[1] else np.tile(np.arange(c), (len(s), 1))
            approx = np.take_along_axis(s, cand, axis=1)
            order = np.argsort(-approx, axis=1, kind="stable")
            return np.take_along_axis(cand, order, axis=1), np.take_along_axis(approx, order, axis=1)

        return top

    return search


def _native_bf16(device) -> bool:
    from featcache.devices import native_bf16  # imports torch: only once a torch search is chosen

    return native_bf16(device)


def _torch_candidates(train: np.ndarray, device, bfloat16: bool):
    """Candidate search by a bfloat16 (``bfloat16``, where the device has it natively: AMX cores
    run it 3-5x faster than numpy's float32) or float32 product and torch's top-k on ``device``.
    A float32 product on a CPU where numpy's BLAS beats torch's MKL (:func:`numpy_gemm`: 1.3x on
    an AMD EPYC) is numpy's, on the same transposed copy."""
    import torch  # only for searches large enough to pay for the import (TORCH_MIN_WORK), or a GPU

    dtype = torch.bfloat16 if bfloat16 else torch.float32
    # transposed once, (features, rows): the bfloat16 product then runs 1.2x faster on the CPU
    # (10,000 x 51,000 x 1,280: 1.0 instead of 1.23 s) for 0.05 s more than a plain copy
    source = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32))
    train_t = torch.empty((train.shape[1], len(train)), dtype=dtype)
    for a in range(0, len(train), _TRANSPOSE_ROWS):  # in blocks that stay in cache: 1.7x faster than one copy
        train_t[:, a : a + _TRANSPOSE_ROWS].copy_(source[a : a + _TRANSPOSE_ROWS].to(dtype).t())
    train_t = train_t.to(device)
    numpy_t = train_t.numpy() if not bfloat16 and numpy_gemm(device) else None

    def search(q: np.ndarray):
        q32 = np.ascontiguousarray(q, dtype=np.float32)
        if numpy_t is not None:
            sims = torch.from_numpy(q32 @ numpy_t)
        else:
            with float32_accumulation(torch, device):
                sims = torch.from_numpy(q32).to(device, dtype) @ train_t

        def top(rows: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
            s = sims if len(rows) == len(sims) else sims[torch.from_numpy(rows).to(device)]
            approx, cand = torch.topk(s, c, dim=1, sorted=True)
            return cand.cpu().numpy(), approx.float().cpu().numpy()

        return top

    return search


@contextlib.contextmanager
def float32_accumulation(torch, device):
    """cuBLAS may sum bfloat16 products in bfloat16 (``allow_bf16_reduced_precision_reduction``,
    on by default) and multiply float32 in TF32 (``allow_tf32``, when a program turns it on),
    neither of which :func:`search_error` bounds: both off for the search."""
    if device.type != "cuda":
        yield
        return
    flags = torch.backends.cuda.matmul
    before = flags.allow_bf16_reduced_precision_reduction, flags.allow_tf32
    flags.allow_bf16_reduced_precision_reduction = flags.allow_tf32 = False
    try:
        yield
    finally:
        flags.allow_bf16_reduced_precision_reduction, flags.allow_tf32 = before


def _rerank(q: np.ndarray, train: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of the candidates by float64 similarity (ties: lower index first)."""
    # float32 inputs, float64 products and sums: the same numbers as converting both to float64
    # first, without writing a float64 copy of the gathered rows (2.7x faster)
    cols = max(1, RERANK_BYTES // (len(q) * train.shape[1] * train.itemsize))  # < width: a very wide band
    exact = np.concatenate([np.einsum("id,icd->ic", q, train[cand[:, j : j + cols]], dtype=np.float64)
                            for j in range(0, cand.shape[1], cols)], axis=1)
    order = _order(exact, cand)[:, :k]
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(exact, order, axis=1)


def _order(exact: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per row: columns by decreasing similarity, ties by increasing training index."""
    by_index = np.argsort(cand, axis=1, kind="stable")
    by_sim = np.argsort(-np.take_along_axis(exact, by_index, axis=1), axis=1, kind="stable")
    return np.take_along_axis(by_index, by_sim, axis=1)


def vote(labels: np.ndarray, sims: np.ndarray, n_classes: int, weights: str) -> np.ndarray:
    """Class probabilities (m, n_classes) from neighbour labels and cosine similarities.

    ``distance`` weights are ``1 / ||x - t||`` of unit vectors (``sqrt(2 - 2 cos)``); a row
    with exact matches (distance 0) gives them all the weight, as scikit-learn does.
    """
    m, k = labels.shape
    if weights == "uniform":
        w = np.ones((m, k))
    else:
        dist = np.sqrt(np.maximum(2.0 - 2.0 * sims.astype(np.float64), 0.0))
        with np.errstate(divide="ignore"):
            w = 1.0 / dist
        exact = np.isinf(w).any(axis=1)
        w[exact] = np.isinf(w[exact]).astype(np.float64)
    cells = (np.arange(m)[:, None] * n_classes + labels).ravel()
    proba = np.bincount(cells, weights=w.ravel(), minlength=m * n_classes).reshape(m, n_classes)
    proba /= proba.sum(axis=1, keepdims=True)
    return proba


def class_means(blocks: FeatureBlocks, y: np.ndarray, n_classes: int, center: np.ndarray) -> np.ndarray:
    """Unit-norm mean of the unit-norm centred rows of each class (float64, (n_classes, d))."""
    sums = np.zeros((n_classes, blocks.n_features))
    for start, stop, block in blocks:
        yb = y[start:stop]
        onehot = np.zeros((n_classes, len(yb)), dtype=np.float32)
        onehot[yb, np.arange(len(yb))] = 1.0
        sums += onehot @ normalize_rows(block, center)
    means = sums / np.bincount(y, minlength=n_classes)[:, None]
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
