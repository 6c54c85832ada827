"""Blockwise cosine nearest neighbours and class means in float32 (numpy BLAS, no torch).

:func:`top_k_cosine` multiplies chunks of queries by the unit-norm training matrix (one
float32 ``sgemm`` per chunk) and keeps the ``k`` largest similarities of each row; a chunk's
similarity matrix is sized from the available memory (:func:`featcache.train.heads.blocks.chunk_rows`),
so the full (queries x training rows) matrix never exists. :func:`vote` turns neighbours into
class probabilities exactly as scikit-learn's ``KNeighborsClassifier`` (``uniform`` or
``distance`` weights, exact matches taking all the weight).
"""
from __future__ import annotations

import numpy as np

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


#: Candidates kept beyond ``k`` by the float32 search before the exact float64 re-ranking.
RERANK_MARGIN = 8
_RERANK_ROWS = 128


def top_k_cosine(queries: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (m, k) and cosine similarities (m, k) of the ``k`` most similar rows of
    ``train`` (unit rows) for each unit row of ``queries``, most similar first.

    The search is one float32 matrix product per chunk of queries; its ``k + RERANK_MARGIN``
    best candidates are then re-scored in float64 row by row, so that the answer for a row
    does not depend on which other rows share its chunk (BLAS rounding does), and ties go
    to the lower training index.
    """
    m, n = len(queries), len(train)
    c = min(n, k + RERANK_MARGIN)
    idx = np.empty((m, k), dtype=np.int64)
    sims = np.empty((m, k), dtype=np.float64)
    step = chunk_rows(n * 4 * 3, least=_RERANK_ROWS)
    for a in range(0, m, step):
        q = queries[a : a + step]
        S = q.astype(np.float32, copy=False) @ train.T.astype(np.float32, copy=False)
        cand = np.argpartition(S, n - c, axis=1)[:, n - c :] if c < n else np.tile(np.arange(n), (len(q), 1))
        del S
        for r in range(0, len(q), _RERANK_ROWS):
            rows = slice(r, r + _RERANK_ROWS)
            i_k, s_k = _rerank(q[rows], train, cand[rows], k)
            idx[a + r : a + r + len(i_k)], sims[a + r : a + r + len(i_k)] = i_k, s_k
    return idx, sims


def _rerank(q: np.ndarray, train: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of the candidates by float64 similarity (ties: lower index first)."""
    exact = np.einsum("id,icd->ic", q.astype(np.float64), train[cand].astype(np.float64))
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
