"""Heads built on numpy / scipy / scikit-learn: ``logreg``, ``svm``, ``knn``, ``ncm``.

``logreg`` and ``svm`` minimise scikit-learn's objectives (``LogisticRegression``,
``LinearSVC``) on standardised features. A rule on the shape picks the solver
(:func:`uses_sklearn_solver`): the float32 blockwise L-BFGS of
:mod:`featcache.train.heads.solvers` for large or lazy matrices, scikit-learn's own solver
for small in-memory ones (:data:`SKLEARN_MAX_MACS`; measurements in ``benchmarks/README.md``). ``knn`` and ``ncm`` compute in
blocks (:mod:`featcache.train.heads.neighbors`; ``knn``'s large neighbour searches use torch).
``logreg``, ``svm`` and ``knn`` take a ``device``: their large products run with torch there
(``"auto"``: a GPU when there is one). The learned arrays are the head's
own attributes and predictions are computed from them, so a head rebuilt with
``from_state`` predicts exactly like the original.

Every head here trains on a lazy ``X`` (``h5py.Dataset``, ``np.memmap``, the rows of a view
read from disk) by streaming blocks of rows, pass after pass; none of them makes a float64
copy of the training matrix. They warm-start along a sweep (``fit(X, y, warm_start=head)``,
the heads' ``path_param``, :func:`featcache.train.sweeps.path_order`); ``logreg`` and ``svm`` fit a
grid over ``C`` at once (``fit_together``: the solves share their passes over the data).
"""
from __future__ import annotations

import warnings
import weakref

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from featcache.train.heads._torch_train import check_device, check_device_name
from featcache.train.heads.base import HeadBase, HeadInputError, adopt, is_lazy, softmax, standardized_affine
from featcache.train.heads.blocks import FeatureBlocks, column_stats
from featcache.train.heads.neighbors import CosineSearch, class_means, normalize_rows, normalized_copy, vote
from featcache.train.heads.registry import register_head
from featcache.train.heads.solvers import LinearObjective, fit_linear, fit_linear_together

#: Below this many multiply-adds per pass (rows x features x classes), fit on one BLAS thread:
#: threaded BLAS on small matrices mostly waits on a busy machine (benchmarks/blas_threads.py:
#: logreg on 1,257 x 512 fits 2.3x faster on one thread).
SINGLE_THREAD_MACS = 32 * 2**20
#: In-memory matrices up to this many multiply-adds per pass (rows x features x classes) are
#: fitted by scikit-learn's solver (float64), larger ones by the float32 blockwise L-BFGS.
SKLEARN_MAX_MACS = 8 * 2**20


def uses_sklearn_solver(X, n_classes: int) -> bool:
    """True when ``logreg``/``svm`` fit ``X`` with scikit-learn's solver (small, in memory)."""
    if is_lazy(X):
        return False
    return X.shape[0] * X.shape[1] * max(n_classes, 2) <= SKLEARN_MAX_MACS


def _check_positive(head, name: str, value, *, integer: bool = False) -> None:
    types = (int, np.integer) if integer else (int, float, np.number)
    ok = isinstance(value, types)
    if isinstance(value, bool) or not ok or not value > 0:
        kind = "a positive int" if integer else "a positive number"
        raise HeadInputError(
            f"{type(head).__name__}: {name}={value!r} is not valid; expected {kind}; "
            f"fix the {name} parameter"
        )


def _compatible(head, warm_start, y_enc: np.ndarray) -> bool:
    """True when ``warm_start`` is a fitted head of the same class and the same labels."""
    return (
        type(warm_start) is type(head)
        and getattr(warm_start, "n_features_in_", None) == head.n_features_in_
        and np.array_equal(getattr(warm_start, "classes_", None), head.classes_)
        and getattr(warm_start, "n_samples_fit_", None) == len(y_enc)
    )


_DEVICE_DOC = """
    ``device`` ('auto', 'cpu', 'cuda', 'cuda:N'): where the blockwise solver's float32 products
    run. 'auto' and 'cpu' make them with numpy below ``solvers.TORCH_MIN_MACS`` multiply-adds a
    pass and with torch from there on (on the CPU of an x86 machine not made by Intel, numpy at
    any size), 'auto' on CUDA when there is one (the matrix is copied
    to the GPU once; each pass moves only the parameters, scores and gradient). A GPU named
    explicitly must exist and is used for every blockwise fit. Small in-memory matrices go to
    scikit-learn on the CPU whatever the device.
"""


class _LinearModelHead(HeadBase):
    """Standardise, then a linear model ``coef_``/``intercept_`` (scikit-learn's objective)."""

    _state_keys = (
        "classes_", "n_features_in_", "mean_", "scale_", "coef_", "intercept_", "n_iter_",
    )
    _loss = "logistic"
    path_param = "C"
    _process_local = ("_factor_",)  # derived from the training matrix: ~d*d*8 bytes not to ship

    def make_reference(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X, y, warm_start=None):
        """Fit on features ``X`` (array or lazy array) and labels ``y``; returns ``self``.

        ``warm_start``: a head of this class fitted on the same ``X`` and ``y`` (a sweep's
        previous point); its solution and statistics are the starting point.
        """
        self.check_params()
        X, y_enc = self._validate_any_fit(X, y)
        return self._fit_validated(X, y_enc, warm_start)

    def _fit_validated(self, X, y_enc: np.ndarray, warm_start=None):
        """``fit`` on checked features and encoded labels (``classes_`` and ``n_features_in_`` set)."""
        check_device(self.device)
        blocks = FeatureBlocks(X, self.n_features_in_)
        warm = warm_start if _compatible(self, warm_start, y_enc) else None
        self.mean_, self.scale_ = (warm.mean_, warm.scale_) if warm else column_stats(blocks)
        self.n_samples_fit_ = len(y_enc)
        if uses_sklearn_solver(X, len(self.classes_)):
            self._fit_sklearn(blocks.X, y_enc)
            return self
        init = (warm.coef_, warm.intercept_) if warm else None
        res = fit_linear(self._objective(blocks, y_enc), max_iter=self.max_iter, tol=1e-4, init=init,
                         who=type(self).__name__, factor=getattr(warm, "_factor_", None))
        self._take_solution(res)
        return self

    def _objective(self, blocks: FeatureBlocks, y_enc: np.ndarray) -> LinearObjective:
        """The blockwise solver's objective of this head (its ``C``, ``mean_``, ``scale_``)."""
        return LinearObjective(blocks, y_enc, len(self.classes_), loss=self._loss, C=self.C,
                               mean=self.mean_, scale=self.scale_, device=self.device)

    def _take_solution(self, res) -> None:
        self.coef_, self.intercept_, self.n_iter_ = res.coef, res.intercept, res.n_iter
        self._factor_ = res.factor  # a path's next point preconditions with it (not saved)

    #: parameters a sweep may vary and still fit its whole grid at once (:meth:`fit_together`)
    together_params = ("C",)

    @classmethod
    def fit_together(cls, heads: list, X, y) -> list:
        """Fit ``heads`` (differing only in ``C``) on ``X``, ``y``; returns them.

        The blockwise solver runs their L-BFGS solves side by side, each pass over the data
        evaluating every solve still running (:func:`~featcache.train.heads.solvers.fit_linear_together`):
        each ends at the solution of its own objective by its own fit's stopping rule (the
        iterates differ from a separate fit's by float rounding). Where scikit-learn's solver
        fits (small in-memory matrices), they are fitted one after the other, each from the
        previous one.
        """
        first = heads[0]
        for head in heads:
            head.check_params()
        X, y_enc = first._validate_any_fit(X, y)
        if len(heads) == 1 or uses_sklearn_solver(X, len(first.classes_)):
            adopt(heads, first)  # the classes, feature count and names: validated once
            previous = None
            for head in heads:
                previous = head._fit_validated(X, y_enc, warm_start=previous)
            return heads
        check_device(first.device)
        blocks = FeatureBlocks(X, first.n_features_in_)
        first.mean_, first.scale_ = column_stats(blocks)
        first.n_samples_fit_ = len(y_enc)
        adopt(heads, first)
        fits = fit_linear_together(first._objective(blocks, y_enc), [head.C for head in heads],
                                   max_iter=first.max_iter, tol=1e-4, who=cls.__name__)
        for head, res in zip(heads, fits):
            head._take_solution(res)
        return heads

    def check_params(self) -> None:
        _check_positive(self, "C", self.C)
        _check_positive(self, "max_iter", self.max_iter, integer=True)
        check_device_name(self.device)

    def _fit_sklearn(self, X: np.ndarray, y_enc: np.ndarray) -> None:
        """scikit-learn's own solver, in float64 (small matrices: see :data:`SKLEARN_MAX_MACS`)."""
        small = X.shape[0] * X.shape[1] * max(len(self.classes_), 2) < SINGLE_THREAD_MACS
        Xs = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        with threadpool_limits(limits=1 if small else None, user_api="blas"):
            model = self.make_reference().fit(Xs, y_enc)
        self.coef_ = np.ascontiguousarray(model.coef_, dtype=np.float64)
        self.intercept_ = np.ascontiguousarray(np.atleast_1d(model.intercept_), dtype=np.float64)
        self.n_iter_ = int(np.max(model.n_iter_))

    def _decision(self, X: np.ndarray) -> np.ndarray:
        scores = standardized_affine(X, self.mean_, self.scale_, self.coef_.T, self.intercept_)
        if scores.shape[1] == 1:  # binary: one score for classes_[1]
            scores = np.hstack([np.zeros_like(scores), scores])
        return scores


@register_head("logreg")
class LogRegHead(_LinearModelHead):
    __doc__ = """Logistic regression on standardised features (``StandardScaler`` + ``LogisticRegression``).

    Parameters: ``C`` inverse L2 regularisation strength, ``max_iter`` of the L-BFGS solver,
    ``device`` of its matrix products (below).
    Large or lazy matrices are fitted by the float32 blockwise L-BFGS (lazy arrays streamed),
    small in-memory ones by ``LogisticRegression(solver="lbfgs")`` in float64
    (:func:`uses_sklearn_solver`); both minimise the same objective with the same stopping
    rule. Multinomial for more than two classes; probabilities are calibrated by the model.
    """ + _DEVICE_DOC

    _default_grid = {"C": [0.01, 0.1, 1.0, 10.0]}

    def __init__(self, C: float = 1.0, max_iter: int = 1000, device: str = "auto"):
        self.C = C
        self.max_iter = max_iter
        self.device = device

    def make_reference(self):
        """The scikit-learn estimator of the same objective (for small matrices, benchmarks)."""
        return LogisticRegression(C=self.C, max_iter=self.max_iter)

    def _proba_from_decision(self, decision: np.ndarray) -> np.ndarray:
        if decision.shape[1] == 2:
            p1 = expit(decision[:, 1])
            return np.column_stack([1.0 - p1, p1])
        return softmax(decision)


@register_head("svm")
class SVMHead(_LinearModelHead):
    __doc__ = """Linear SVM (``LinearSVC``: squared hinge, one-vs-rest, L2) on standardised features.

    Large or lazy matrices: LinearSVC's primal objective (the intercept penalised like a
    feature of value 1, as ``intercept_scaling=1`` does) minimised by float32 L-BFGS over
    blocks of rows; small in-memory ones: ``LinearSVC(dual=True)`` (liblinear, float64;
    :func:`uses_sklearn_solver`). Strong
    regularisation (small ``C``) is both faster and usually more accurate on standardised
    CNN features, hence the default ``C=0.01``.

    ``predict_proba`` is the softmax of the decision function (binary: the sigmoid of the
    margin, i.e. softmax of ``[0, margin]``). It is monotone in the margins, so its argmax
    always agrees with ``predict``, costs nothing extra and persists exactly, but it is
    *not calibrated*: use ``logreg`` when probabilities must be meaningful (or wrap the
    head in ``CalibratedClassifierCV``).
    """ + _DEVICE_DOC

    _default_grid = {"C": [0.0001, 0.001, 0.01, 0.1]}
    _loss = "squared_hinge"

    def __init__(self, C: float = 0.01, max_iter: int = 2000, random_state=0, device: str = "auto"):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state
        self.device = device

    def make_reference(self):
        """The scikit-learn estimator of the same objective (for small matrices, benchmarks)."""
        return LinearSVC(
            C=self.C, dual=True, max_iter=self.max_iter, random_state=self.random_state
        )


@register_head("knn")
class KNNHead(HeadBase):
    """Cosine k-nearest neighbours: L2-normalised rows, votes as ``KNeighborsClassifier``.

    On unit vectors the Euclidean distance is ``sqrt(2 - 2 cos)``, so neighbours are the
    most cosine-similar training rows; they are found by blockwise float32 matrix products
    (:class:`featcache.train.heads.neighbors.CosineSearch`). ``weights`` is ``"uniform"`` or
    ``"distance"``. ``n_neighbors`` larger than the training set is clipped
    (``n_neighbors_``). Learned state: the normalised training matrix ``fit_X_`` (float32;
    files written before it was float32 hold float64 and are used as they are) and the
    encoded labels ``fit_y_``. Along a sweep (``fit(X, y, warm_start=head)``) the normalised
    matrix is shared, and the neighbours of the last predicted matrix are reused by every
    head of the path with fewer neighbours (the path runs from the largest ``n_neighbors``).
    ``device`` ('auto', 'cpu', 'cuda', 'cuda:N'): where large searches run (torch; 'auto':
    CUDA when there is one); small ones use numpy on the CPU unless a GPU is named.
    """

    _state_keys = ("classes_", "n_features_in_", "fit_X_", "fit_y_", "n_neighbors_")
    _process_local = ("_last_query_",)  # weak references do not pickle; the cache is rebuilt
    _default_grid = {"n_neighbors": [1, 5, 10, 20], "weights": ["uniform", "distance"]}
    path_param = "n_neighbors"
    path_descending = True

    def __init__(self, n_neighbors: int = 10, weights: str = "distance", device: str = "auto"):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.device = device

    def check_params(self) -> None:
        _check_positive(self, "n_neighbors", self.n_neighbors, integer=True)
        check_device_name(self.device)
        if self.weights not in ("uniform", "distance"):
            raise HeadInputError(
                f"KNNHead: weights={self.weights!r} is not valid; expected 'uniform' or "
                "'distance'; fix the weights parameter"
            )

    def fit(self, X, y, warm_start=None):
        """Fit on features ``X`` (array or lazy array) and labels ``y``; returns ``self``."""
        self.check_params()
        X, y_enc = self._validate_any_fit(X, y)
        check_device(self.device)  # a head loaded on a machine without the GPU: _search_device
        if _compatible(self, warm_start, y_enc):
            self.fit_X_, self._last_query_ = warm_start.fit_X_, warm_start.__dict__.setdefault("_last_query_", {})
        else:
            self.fit_X_ = normalized_copy(FeatureBlocks(X, self.n_features_in_))
            self._last_query_ = {}
        self.fit_y_ = y_enc
        self.n_samples_fit_ = len(y_enc)
        self.n_neighbors_ = int(min(self.n_neighbors, len(y_enc)))
        return self

    def _neighbors(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour indices and similarities of every row of ``X`` (reusing the last query)."""
        k, last = self.n_neighbors_, self.__dict__.setdefault("_last_query_", {})
        ref = last.get("ref")
        if ref is not None and ref() is X and last["idx"].shape[1] >= k:
            return last["idx"][:, :k], last["sims"][:, :k]
        blocks = self._query_blocks(X)
        search = CosineSearch(self.fit_X_, self._search_device(), n_queries=sum(len(b) for b in blocks))
        parts = [search.top_k(normalize_rows(block.astype(self.fit_X_.dtype, copy=False)), k) for block in blocks]
        idx = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), dtype=np.int64)
        sims = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k))
        try:
            last.update(ref=weakref.ref(X), idx=idx, sims=sims)
        except TypeError:  # an object without weak references: no reuse
            pass
        return idx, sims

    def _search_device(self) -> str:
        """``device``, or ``"auto"`` with a warning when it names a GPU this machine lacks: a
        head fitted on a GPU machine and loaded elsewhere still predicts."""
        if str(self.device).startswith("cuda"):
            import torch  # a GPU was named: the search uses torch anyway

            if not torch.cuda.is_available():
                warnings.warn(f"KNNHead: device={self.device!r} is not available here (no CUDA); "
                              "searching the neighbours on this machine's device ('auto')", RuntimeWarning,
                              stacklevel=5)
                return "auto"
        return self.device

    def _query_blocks(self, X):
        if is_lazy(X):
            self._check_lazy_features(X)
            return [block for _, _, block in FeatureBlocks(X, self.n_features_in_)]
        return [self._validate_predict(X)]

    def _decision_any(self, X) -> np.ndarray:
        check_is_fitted(self)
        idx, sims = self._neighbors(X)
        return vote(np.asarray(self.fit_y_)[idx], sims, len(self.classes_), self.weights)

    def _proba_from_decision(self, decision: np.ndarray) -> np.ndarray:
        return decision


@register_head("ncm")
class NCMHead(HeadBase):
    """Nearest class mean with cosine geometry.

    Features are (optionally) centred with the training mean (``center=True``, as in
    SimpleShot's CL2N), L2-normalised; each class is represented by the normalised mean of
    its normalised rows (``centroids_``). A row goes to the closest centroid;
    ``predict_proba`` is ``softmax(-||x - c||^2 / temperature)`` over classes (squared
    distances of unit vectors, ``2 - 2 cos``). ``temperature`` only changes probabilities,
    not predictions. Fitted in float32 blocks with float64 sums (lazy arrays streamed).
    """

    _state_keys = ("classes_", "n_features_in_", "mean_", "centroids_")
    _default_grid = {"center": [True, False], "temperature": [0.05, 0.1, 0.2]}
    path_param = "temperature"

    def __init__(self, temperature: float = 0.1, center: bool = True):
        self.temperature = temperature
        self.center = center

    def check_params(self) -> None:
        _check_positive(self, "temperature", self.temperature)

    def fit(self, X, y, warm_start=None):
        """Fit on features ``X`` (array or lazy array) and labels ``y``; returns ``self``.

        ``warm_start``: an ncm head with the same ``center`` fitted on the same data; its
        centroids are reused (``temperature`` does not change them).
        """
        self.check_params()
        X, y_enc = self._validate_any_fit(X, y)
        self.n_samples_fit_ = len(y_enc)
        if _compatible(self, warm_start, y_enc) and warm_start.center == self.center:
            self.mean_, self.centroids_ = warm_start.mean_, warm_start.centroids_
            return self
        blocks = FeatureBlocks(X, self.n_features_in_)
        self.mean_ = column_stats(blocks)[0] if self.center else np.zeros(self.n_features_in_)
        self.centroids_ = class_means(blocks, y_enc, len(self.classes_), self.mean_)
        return self

    def _decision(self, X: np.ndarray) -> np.ndarray:
        Xn = normalize_rows(np.asarray(X, dtype=np.float64), self.mean_)
        sq_dist = (
            (Xn**2).sum(axis=1, keepdims=True)
            - 2.0 * Xn @ self.centroids_.T
            + (self.centroids_**2).sum(axis=1)
        )
        return -np.maximum(sq_dist, 0.0) / float(self.temperature)
