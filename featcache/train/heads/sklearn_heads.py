"""Heads built on scikit-learn / numpy: ``logreg``, ``svm``, ``knn``, ``ncm``.

Training uses scikit-learn; the fitted arrays are then copied into the head's own
attributes and predictions are computed from those arrays, so a head rebuilt with
``from_state`` predicts exactly like the original.

These heads need the training matrix in memory (a lazy ``X`` is read whole in ``fit``);
prediction works blockwise on lazy arrays like every head.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

#: Below this many multiply-adds per pass (rows x features x classes), fit on one BLAS thread:
#: threaded BLAS on small matrices mostly waits on a busy machine (benchmarks/blas_threads.py:
#: logreg on 1,257 x 512 fits 2.3x faster on one thread).
SINGLE_THREAD_MACS = 32 * 2**20

from featcache.train.heads.base import HeadBase, HeadInputError, is_lazy, l2_normalize, softmax
from featcache.train.heads.registry import register_head


def _materialize(X):
    """A lazy array read whole (sklearn-based heads train in memory)."""
    if is_lazy(X):
        if hasattr(X, "detach"):
            return X.detach().cpu().numpy()
        return X[0 : X.shape[0]]
    return X


def _standardize_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0, dtype=np.float64)
    scale = X.std(axis=0, dtype=np.float64)
    scale[scale < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean, scale


def _check_positive(head, name: str, value, *, integer: bool = False) -> None:
    types = (int, np.integer) if integer else (int, float, np.number)
    ok = isinstance(value, types)
    if isinstance(value, bool) or not ok or not value > 0:
        kind = "a positive int" if integer else "a positive number"
        raise HeadInputError(
            f"{type(head).__name__}: {name}={value!r} is not valid; expected {kind}; "
            f"fix the {name} parameter"
        )


class _LinearModelHead(HeadBase):
    """Standardise, then a linear model ``coef_``/``intercept_`` learned by scikit-learn."""

    _state_keys = (
        "classes_", "n_features_in_", "mean_", "scale_", "coef_", "intercept_", "n_iter_",
    )

    def _make_estimator(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X, y):
        """Fit on features ``X`` (n_samples, n_features) and labels ``y``; returns ``self``."""
        X, y_enc = self._validate_fit(_materialize(X), y)
        _check_positive(self, "C", self.C)
        _check_positive(self, "max_iter", self.max_iter, integer=True)
        X = np.asarray(X, dtype=np.float64)
        self.mean_, self.scale_ = _standardize_stats(X)
        small = X.shape[0] * X.shape[1] * max(len(self.classes_), 2) < SINGLE_THREAD_MACS
        with threadpool_limits(limits=1 if small else None, user_api="blas"):
            model = self._make_estimator().fit((X - self.mean_) / self.scale_, y_enc)
        self.coef_ = np.ascontiguousarray(model.coef_, dtype=np.float64)
        self.intercept_ = np.ascontiguousarray(np.atleast_1d(model.intercept_), dtype=np.float64)
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def _decision(self, X: np.ndarray) -> np.ndarray:
        Xs = (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_
        scores = Xs @ self.coef_.T + self.intercept_
        if scores.shape[1] == 1:  # binary: one score for classes_[1]
            scores = np.hstack([np.zeros_like(scores), scores])
        return scores


@register_head("logreg")
class LogRegHead(_LinearModelHead):
    """Logistic regression on standardised features (``StandardScaler`` + ``LogisticRegression``).

    Parameters: ``C`` inverse L2 regularisation strength, ``max_iter`` of the lbfgs solver.
    Multinomial for more than two classes; probabilities are calibrated by the model itself.
    """

    _default_grid = {"C": [0.01, 0.1, 1.0, 10.0]}

    def __init__(self, C: float = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def _make_estimator(self):
        return LogisticRegression(C=self.C, max_iter=self.max_iter)

    def _proba_from_decision(self, decision: np.ndarray) -> np.ndarray:
        if decision.shape[1] == 2:
            p1 = expit(decision[:, 1])
            return np.column_stack([1.0 - p1, p1])
        return softmax(decision)


@register_head("svm")
class SVMHead(_LinearModelHead):
    """Linear SVM (``LinearSVC``: squared hinge, one-vs-rest) on standardised features.

    Solved in the dual (``dual=True``), which on standardised, dense features of a few
    hundred to a few thousand dimensions converges much faster than liblinear's primal
    solver; strong regularisation (small ``C``) is both faster and usually more accurate
    there, hence the default ``C=0.01``.

    ``predict_proba`` is the softmax of the decision function (binary: the sigmoid of the
    margin, i.e. softmax of ``[0, margin]``). It is monotone in the margins, so its argmax
    always agrees with ``predict``, costs nothing extra and persists exactly, but it is
    *not calibrated*: use ``logreg`` when probabilities must be meaningful (or wrap the
    head in ``CalibratedClassifierCV``).
    """

    _default_grid = {"C": [0.0001, 0.001, 0.01, 0.1]}

    def __init__(self, C: float = 0.01, max_iter: int = 2000, random_state=0):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _make_estimator(self):
        return LinearSVC(
            C=self.C, dual=True, max_iter=self.max_iter, random_state=self.random_state
        )


@register_head("knn")
class KNNHead(HeadBase):
    """Cosine k-nearest neighbours: L2-normalise rows, then ``KNeighborsClassifier``.

    On unit vectors the Euclidean distance is ``sqrt(2 - 2 cos)``, so neighbours are the
    most cosine-similar training rows. ``weights`` is ``"uniform"`` or ``"distance"``.
    ``n_neighbors`` larger than the training set is clipped (``n_neighbors_``).
    Learned state: the normalised training matrix ``fit_X_`` and encoded labels ``fit_y_``.
    """

    _state_keys = ("classes_", "n_features_in_", "fit_X_", "fit_y_", "n_neighbors_")
    _default_grid = {"n_neighbors": [1, 5, 10, 20], "weights": ["uniform", "distance"]}

    def __init__(self, n_neighbors: int = 10, weights: str = "distance"):
        self.n_neighbors = n_neighbors
        self.weights = weights

    def fit(self, X, y):
        """Fit on features ``X`` (n_samples, n_features) and labels ``y``; returns ``self``."""
        X, y_enc = self._validate_fit(_materialize(X), y)
        _check_positive(self, "n_neighbors", self.n_neighbors, integer=True)
        if self.weights not in ("uniform", "distance"):
            raise HeadInputError(
                f"KNNHead: weights={self.weights!r} is not valid; expected 'uniform' or "
                "'distance'; fix the weights parameter"
            )
        self.fit_X_ = l2_normalize(np.asarray(X, dtype=np.float64))
        self.fit_y_ = y_enc
        self.n_neighbors_ = int(min(self.n_neighbors, len(y_enc)))
        self._after_state_loaded()
        return self

    def _after_state_loaded(self) -> None:
        self.knn_ = KNeighborsClassifier(
            n_neighbors=int(self.n_neighbors_), weights=self.weights, algorithm="brute"
        ).fit(np.asarray(self.fit_X_, dtype=np.float64), np.asarray(self.fit_y_))

    def _decision(self, X: np.ndarray) -> np.ndarray:
        proba = self.knn_.predict_proba(l2_normalize(np.asarray(X, dtype=np.float64)))
        # the neighbour model only knows the encoded labels 0..n_classes-1, all present
        return proba

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
    not predictions.
    """

    _state_keys = ("classes_", "n_features_in_", "mean_", "centroids_")
    _default_grid = {"center": [True, False], "temperature": [0.05, 0.1, 0.2]}

    def __init__(self, temperature: float = 0.1, center: bool = True):
        self.temperature = temperature
        self.center = center

    def fit(self, X, y):
        """Fit on features ``X`` (n_samples, n_features) and labels ``y``; returns ``self``."""
        X, y_enc = self._validate_fit(_materialize(X), y)
        _check_positive(self, "temperature", self.temperature)
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0) if self.center else np.zeros(X.shape[1])
        Xn = l2_normalize(X - self.mean_)
        sums = np.zeros((len(self.classes_), X.shape[1]))
        np.add.at(sums, y_enc, Xn)
        self.centroids_ = l2_normalize(sums / np.bincount(y_enc)[:, None])
        return self

    def _decision(self, X: np.ndarray) -> np.ndarray:
        Xn = l2_normalize(np.asarray(X, dtype=np.float64) - self.mean_)
        sq_dist = (
            (Xn**2).sum(axis=1, keepdims=True)
            - 2.0 * Xn @ self.centroids_.T
            + (self.centroids_**2).sum(axis=1)
        )
        return -np.maximum(sq_dist, 0.0) / float(self.temperature)
