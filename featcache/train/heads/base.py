"""Common machinery of every head: input checks, label encoding, blockwise prediction, state.

A head is a scikit-learn classifier (``ClassifierMixin, BaseEstimator``, in that order as
scikit-learn requires): hyperparameters are ``__init__`` arguments stored unchanged, learned
state ends in ``_``, ``fit(X, y)`` returns ``self``. On top of that every head can export its
learned state as plain numpy arrays (:meth:`HeadBase.get_state`) and be rebuilt from them
(:meth:`HeadBase.from_state`) so that heads are persisted without pickling.

Feature matrices ``X`` may be numpy arrays (or anything ``np.asarray`` accepts) or *lazy*
arrays: an ``h5py.Dataset``, an ``np.memmap`` or any object with a 2-d ``shape``, a ``dtype``
and row slicing ``X[a:b]`` (see :func:`is_lazy`). Lazy arrays are read in contiguous blocks
of rows and never converted as a whole.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterator

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from featcache.errors import HeadError

#: Bytes of float32 features read per block from a lazy array (rows = BLOCK_BYTES // (4 * d)).
BLOCK_BYTES = 64 * 2**20


class HeadInputError(HeadError, ValueError):
    """Bad data given to a head (NaN features, a single class, wrong shape, ...).

    A :class:`~featcache.errors.HeadError` for the CLI, and a ``ValueError`` so that
    scikit-learn tools (``GridSearchCV``, estimator checks) treat it as invalid input.
    """


def is_lazy(X: Any) -> bool:
    """True if ``X`` should be read block by block instead of converted with ``np.asarray``.

    That is an ``np.memmap``, or an object that is not a numpy array, list, sparse matrix or
    data frame but has a 2-d ``shape``, a ``dtype`` and ``__getitem__`` (``h5py.Dataset``,
    zarr arrays, torch tensors, ...).
    """
    if isinstance(X, np.memmap):
        return X.ndim == 2
    if isinstance(X, (np.ndarray, list, tuple)) or X is None:
        return False
    if hasattr(X, "iloc") or hasattr(X, "__dataframe__") or hasattr(X, "tocsr"):
        return False  # pandas / polars frames, scipy.sparse
    shape = getattr(X, "shape", None)
    return (
        shape is not None
        and len(shape) == 2
        and hasattr(X, "dtype")
        and hasattr(X, "__getitem__")
    )


def block_rows(n_features: int, batch_size: int = 1) -> int:
    """Rows per block read from a lazy array (at least ``batch_size``)."""
    return max(int(batch_size), BLOCK_BYTES // (4 * max(int(n_features), 1)), 1)


def read_block(X: Any, start: int, stop: int, *, n_features: int, what: str = "X",
               check: bool = True) -> np.ndarray:
    """Rows ``start:stop`` of a lazy array as a finite float32 array (``check=False``: a block
    already read and checked by an earlier pass is not scanned for NaN/inf again)."""
    block = X[start:stop]
    if hasattr(block, "detach"):  # torch tensor
        block = block.detach().cpu().numpy()
    block = np.asarray(block, dtype=np.float32)
    if block.ndim != 2 or block.shape != (stop - start, n_features):
        raise HeadInputError(
            f"{what}[{start}:{stop}] has shape {block.shape}; expected "
            f"({stop - start}, {n_features}); pass a 2-d array of features (rows = samples)"
        )
    if check:
        check_finite(block, what=what, offset=start)
    return block


def iter_blocks(
    X: Any, n_features: int, rows: int | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, float32 block)`` over all rows of a lazy array, in order."""
    n = int(X.shape[0])
    rows = rows or block_rows(n_features)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        yield start, stop, read_block(X, start, stop, n_features=n_features)


def check_finite(X: np.ndarray, *, what: str = "X", offset: int = 0) -> None:
    """Raise :class:`HeadInputError` naming the rows when ``X`` holds NaN or inf."""
    if X.dtype.kind in "fc" and not np.isfinite(X).all():
        bad_rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
        kinds = []
        if np.isnan(X).any():
            kinds.append("NaN")
        if np.isinf(X).any():
            kinds.append("inf")
        raise HeadInputError(
            f"features {what} contain {' and '.join(kinds)} values in {len(bad_rows)} row(s) "
            f"(first: row {offset + int(bad_rows[0])}); expected finite numbers; "
            "re-extract those features, or drop or impute the affected rows"
        )


#: Rows per block of :func:`standardized_affine` (its float64 copy of a block: 40 MB at 1,280 features).
DECISION_ROWS = 4096


def fold_standardization(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray,
                         scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 ``(weights, bias)`` with ``x @ weights + bias == ((x - mean) / scale) @ coef +
    intercept`` (``coef``: (features, outputs)): a linear layer on standardised features as one
    on the raw features."""
    weights = np.asarray(coef, dtype=np.float64) / np.asarray(scale, dtype=np.float64)[:, None]
    return weights, np.asarray(intercept, dtype=np.float64) - np.asarray(mean, dtype=np.float64) @ weights


def standardized_affine(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray,
                        intercept: np.ndarray) -> np.ndarray:
    """``((X - mean) / scale) @ coef + intercept`` in float64, ``coef`` (features, outputs).

    The standardisation is folded into the weights (:func:`fold_standardization`) and the
    rows go through in blocks, so no standardised float64 copy of ``X`` is made: scoring
    9,000 x 1,280 rows took 0.09-0.4 s that way (fresh 92 MB arrays), 0.04 s this way. Equal to
    the direct formula up to float64 rounding.
    """
    weights, bias = fold_standardization(coef, intercept, mean, scale)
    out = np.empty((len(X), weights.shape[1]))
    for start in range(0, len(X), DECISION_ROWS):
        out[start:start + DECISION_ROWS] = np.asarray(X[start:start + DECISION_ROWS], dtype=np.float64) @ weights
    out += bias
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; rows sum to 1."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


#: What a head learns from the data alone (not from its parameters): the heads of a grid fitted
#: together share them (:func:`adopt`).
DATA_ATTRS = ("classes_", "n_features_in_", "feature_names_in_", "mean_", "scale_", "n_samples_fit_")


def adopt(heads: list, first) -> None:
    """Give every head of a grid fitted together the data attributes (:data:`DATA_ATTRS`)
    that ``first`` holds: the classes, feature count and names, standardisation and rows. One
    that ``first`` lacks (no feature names for an array) is removed from the others: a head
    refitted in a grid keeps nothing of its previous data."""
    for name in DATA_ATTRS:
        for head in heads:
            if hasattr(first, name):
                setattr(head, name, getattr(first, name))
            elif hasattr(head, name):
                delattr(head, name)


class HeadBase(ClassifierMixin, BaseEstimator):
    """Base of every head. Subclasses implement ``_fit_encoded`` and ``_decision``.

    ``_fit_encoded(X, y_enc)`` learns from a float array and labels ``0..n_classes-1``;
    ``_decision(X)`` returns float64 scores ``(n, n_classes)`` whose argmax is the predicted
    class; ``_proba_from_decision`` turns them into probabilities (softmax by default).
    ``_state_keys`` lists the learned attributes exported by :meth:`get_state`.
    """

    _state_keys: tuple[str, ...] = ("classes_", "n_features_in_")
    #: Default hyperparameter grid for a sweep (see ``featcache.train.heads.default_grid``).
    _default_grid: dict[str, list] = {}
    #: Caches of this process (reused along a sweep's path), left out when the head is pickled.
    _process_local: tuple[str, ...] = ()

    def __getstate__(self):
        state = dict(super().__getstate__())  # object's is the live __dict__: never edit it
        for name in self._process_local:
            state.pop(name, None)
        return state

    # ---------------------------------------------------------------- validation
    def check_params(self) -> None:
        """Raise :class:`HeadInputError` for a parameter value that cannot work.

        Reads no data and imports no torch, so callers check a head before extracting
        features for it (:func:`featcache.train.fitting.check_fit_arguments`); ``fit`` calls
        it first. Checks that need the data (or a GPU) stay in ``fit``.
        """

    def _validate_fit(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Validate ``X, y``; set ``classes_`` and ``n_features_in_``; return X, encoded y."""
        X, y = validate_data(
            self, X, y, dtype=[np.float64, np.float32], ensure_all_finite=False
        )
        check_finite(X, what="X")
        y_enc = self._encode_labels(y)
        return X, y_enc

    def _validate_lazy_fit(self, X: Any, y: Any) -> np.ndarray:
        """Checks of ``fit`` for a lazy ``X`` (``validate_data`` would read it whole).

        Sets ``classes_`` and ``n_features_in_``; returns the encoded labels. NaN/inf are
        found by the first pass over the blocks (:func:`read_block` checks each block).
        """
        n, d = (int(s) for s in X.shape)
        if n < 1 or d < 1:
            raise HeadInputError(
                f"X has shape {(n, d)}; expected at least 1 sample and 1 feature; "
                "pass a non-empty feature matrix"
            )
        y_enc = self._encode_labels(y)
        if len(y_enc) != n:
            raise HeadInputError(
                f"X has {n} rows but y has {len(y_enc)} labels; expected one label per row; "
                "pass matching features and labels"
            )
        self.n_features_in_ = d
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return y_enc

    def _validate_any_fit(self, X: Any, y: Any) -> tuple[Any, np.ndarray]:
        """``(X, encoded y)`` for ``fit``: a lazy ``X`` stays lazy, any other is validated."""
        if is_lazy(X):
            return X, self._validate_lazy_fit(X, y)
        return self._validate_fit(X, y)

    def _encode_labels(self, y: Any) -> np.ndarray:
        if y is None:
            raise HeadInputError(
                f"{type(self).__name__} requires y to be passed, but the target y is None; "
                "pass one label per row of X"
            )
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            only = classes[0].item() if isinstance(classes[0], np.generic) else classes[0]
            raise HeadInputError(
                f"cannot fit {type(self).__name__} on a single class "
                f"({only!r} for all {len(y)} samples); expected labels of at least "
                "2 classes (one class is not a classification problem); add samples of "
                "other classes to the training data"
            )
        self.classes_ = classes
        return y_enc.astype(np.int64)

    def _validate_predict(self, X: Any) -> np.ndarray:
        X = validate_data(
            self, X, dtype=[np.float64, np.float32], ensure_all_finite=False, reset=False
        )
        check_finite(X, what="X")
        return X

    def _check_lazy_features(self, X: Any) -> int:
        d = int(X.shape[1])
        if d != self.n_features_in_:
            raise HeadInputError(
                f"X has {d} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input; use features of the same "
                "backbone/layer the head was fitted on"
            )
        return d

    # ---------------------------------------------------------------- prediction
    def _decision_any(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        if is_lazy(X):
            d = self._check_lazy_features(X)
            parts = [self._decision(block) for _, _, block in iter_blocks(X, d)]
            if not parts:
                return np.zeros((0, len(self.classes_)))
            return np.concatenate(parts, axis=0)
        return self._decision(self._validate_predict(X))

    def _proba_from_decision(self, decision: np.ndarray) -> np.ndarray:
        return softmax(decision)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)``, columns in ``classes_`` order."""
        return self._proba_from_decision(self._decision_any(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (values of ``classes_``)."""
        decision = self._decision_any(X)
        return self.classes_[np.argmax(decision, axis=1)]

    def _decision(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------------- state
    def get_state(self) -> dict[str, np.ndarray]:
        """All learned state as plain numpy arrays (strings as unicode arrays, no objects)."""
        check_is_fitted(self)
        state = {}
        for key in self._state_keys:
            value = np.asarray(getattr(self, key))
            if value.dtype == object:
                value = value.astype(str)
            state[key] = value
        return state

    @classmethod
    def from_state(cls, params: dict[str, Any], state: dict[str, np.ndarray]) -> "HeadBase":
        """Rebuild a fitted head from ``get_params()`` and ``get_state()`` (no pickling)."""
        head = cls(**params)
        missing = [k for k in cls._state_keys if k not in state]
        if missing:
            raise HeadError(
                f"state of a {cls.__name__} lacks {', '.join(missing)}; expected the arrays "
                f"written by {cls.__name__}.get_state(); re-fit and re-save the head"
            )
        for key in cls._state_keys:
            value = np.asarray(state[key])
            if value.dtype == object:
                raise HeadError(
                    f"state entry {key!r} of a {cls.__name__} holds Python objects; expected "
                    "numeric or string arrays; re-fit and re-save the head"
                )
            setattr(head, key, value.item() if value.ndim == 0 and key != "classes_" else value)
        head._after_state_loaded()
        return head

    def _after_state_loaded(self) -> None:
        """Hook: rebuild derived (non-exported) attributes after :meth:`from_state`."""


def seed_from(random_state: Any) -> int:
    """An int seed from an sklearn-style ``random_state`` (int, None or RandomState)."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    if random_state is None:
        return int(np.random.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    raise HeadInputError(
        f"random_state={random_state!r} is not valid; expected an int, None or a "
        "numpy RandomState; pass e.g. random_state=0"
    )
