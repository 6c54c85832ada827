"""Train/val/test splits: which row is used for what.

:func:`make_splits` assigns every row to ``"train"``, ``"val"`` or ``"test"``
(``""`` = not used: unlabelled rows, or rows without a split folder in a
dataset that has its own split). Split names found in the data are normalised
(``"valid"``/``"validation"`` -> ``"val"``). :func:`split_summary` turns an
assignment into the ``split`` block of a results record (see :mod:`featcache.train.results`).

Also home of :class:`EvaluationError`, the error of every evaluation module
(splits, metrics, sweeps, results log): this module is the one they all build on.

Works on numpy arrays only: it never imports a backbone, never reads an image.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from featcache.errors import DataError, EvaluationError

__all__ = ["EvaluationError", "SPLIT_NAMES", "as_class_indices", "check_fraction", "check_seed", "inner_split",
           "make_splits", "repeated_stratified_folds", "split_summary"]


SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "": "",
}


# --------------------------------------------------------------------------- splits


def check_fraction(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EvaluationError(
            f"{name}={value!r} is not a number; expected a fraction strictly between 0 and 1, "
            f"e.g. {name}=0.15"
        ) from None
    if not (0.0 < v < 1.0) or math.isnan(v):
        raise EvaluationError(
            f"{name}={value!r} is out of range; expected a fraction strictly between 0 and 1, "
            f"e.g. {name}=0.15"
        )
    return v


#: Largest split seed: numpy's RandomState takes seeds up to 2**32 - 1, and a carved split
#: uses ``seed + 1`` for its second step.
MAX_SEED = 2**32 - 2


def check_seed(seed: Any) -> int:
    """``seed`` as an int in ``[0, MAX_SEED]``; :class:`EvaluationError` naming it otherwise."""
    fix = "pass a whole number such as seed=0 (fit-head --seed 0)"
    if isinstance(seed, (bool, np.bool_)):
        raise EvaluationError(f"seed={seed!r} is a boolean; expected a whole number from 0 to {MAX_SEED}; {fix}")
    if isinstance(seed, (float, np.floating)) and float(seed).is_integer():
        seed = int(seed)
    if not isinstance(seed, (int, np.integer)):
        raise EvaluationError(f"seed={seed!r} is not a whole number; expected a whole number from 0 to "
                              f"{MAX_SEED}; {fix}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise EvaluationError(f"seed={int(seed)} is out of range; expected a whole number from 0 to {MAX_SEED} "
                              f"(the random seed of the train/val/test split); {fix}")
    return int(seed)


def as_class_indices(
    values: Any,
    bad_shape: Callable[[tuple], Exception],
    bad_dtype: Callable[[np.dtype], Exception],
) -> np.ndarray:
    """``values`` as a 1-d int64 array; floats are accepted when all are finite whole numbers.

    ``bad_shape(shape)`` / ``bad_dtype(dtype)`` build the exception to raise otherwise
    (the caller's error class and message). Shared with :mod:`featcache.train.metrics`.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise bad_shape(arr.shape)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise bad_dtype(arr.dtype)
    return arr.astype(np.int64, copy=False)


def _as_labels(labels: Any) -> np.ndarray:
    return as_class_indices(
        labels,
        lambda shape: DataError(
            f"labels have shape {shape}; expected a 1-d array of integer class indices "
            "(one per row); pass the store's label column"
        ),
        lambda dtype: DataError(
            f"labels have dtype {dtype}; expected integer class indices (-1 for unlabelled); "
            "encode class names as indices first"
        ),
    )


def _normalise_split(split: Any, n: int) -> np.ndarray:
    arr = np.asarray(split)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(
            f"split has shape {arr.shape} but there are {n} labels; expected one split name per row; "
            "pass the split column of the same view"
        )
    out = np.empty(n, dtype="<U5")
    bad: set[str] = set()
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        s = "" if v is None else str(v).strip().lower()
        norm = _SPLIT_ALIASES.get(s)
        if norm is None:
            bad.add(str(v))
            continue
        out[i] = norm
    if bad:
        shown = ", ".join(repr(b) for b in sorted(bad)[:5])
        raise DataError(
            f"unknown split name(s) {shown}; expected 'train', 'val' (or 'valid'/'validation'), "
            "'test' or '' (no split); rename the split folders or pass split=None for a seeded split"
        )
    return out


def _split_once(
    idx: np.ndarray, y: np.ndarray, n_take: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` (with labels ``y``) into (rest, taken) with ``len(taken) == n_take``.

    Stratified when sklearn can stratify: every class has >= 2 members and both
    parts have at least as many rows as there are classes. Otherwise a plain
    seeded shuffle split (documented rule, no warning).
    """
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(y, return_counts=True)
    n_classes = len(classes)
    n_rest = len(idx) - n_take
    stratify = y if (counts.min() >= 2 and n_take >= n_classes and n_rest >= n_classes) else None
    rest, taken = train_test_split(
        idx, test_size=n_take, random_state=seed, shuffle=True, stratify=stratify
    )
    return np.sort(rest), np.sort(taken)


def _check_split_arguments(val_fraction: float, test_fraction: float, seed: Any) -> tuple[float, float, int]:
    val_fraction = check_fraction("val_fraction", val_fraction)
    test_fraction = check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise EvaluationError(
            f"val_fraction={val_fraction} + test_fraction={test_fraction} = "
            f"{val_fraction + test_fraction:g}; expected a sum below 1 so that rows are left for "
            "training; lower one of them (e.g. 0.15 and 0.15)"
        )
    return val_fraction, test_fraction, check_seed(seed)


def _check_classes(y: np.ndarray) -> np.ndarray:
    """The mask of labelled rows; :class:`DataError` without labels or with a single class."""
    labelled = y >= 0
    n_lab = int(labelled.sum())
    if n_lab == 0:
        raise DataError(
            f"none of the {y.shape[0]} rows has a label (all labels < 0); expected a labelled dataset; "
            "put the images in one folder per class or provide a labels file"
        )
    classes = np.unique(y[labelled])
    if len(classes) < 2:
        raise DataError(
            f"all {n_lab} labelled rows belong to a single class ({int(classes[0])}); expected at "
            "least 2 classes to train and evaluate a classifier; add images of other classes"
        )
    return labelled


def _own_split(own: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """The data's own split, with a missing ``test`` and ``val`` carved out of ``train``."""
    out = own.copy()
    if not np.any(out == "train"):
        present = sorted(set(out[out != ""].tolist()))
        raise DataError(
            f"the data's own split has no labelled 'train' rows (found: {', '.join(present)}); "
            "expected a 'train' folder; add one, or pass split=None for a seeded split"
        )
    missing = [name for name in ("test", "val") if not np.any(out == name)]
    for step, name in enumerate(missing):
        frac = val_fraction if name == "val" else test_fraction
        train_idx = np.flatnonzero(out == "train")
        n_take = math.ceil(frac * train_idx.size)
        if train_idx.size - n_take < 1 or n_take < 1:
            raise DataError(
                f"cannot carve a '{name}' split out of {train_idx.size} train rows with "
                f"{name}_fraction={frac}; expected at least 2 train rows; add images or "
                f"provide a '{name}' folder"
            )
        _, taken = _split_once(train_idx, y[train_idx], n_take, seed + step)
        out[taken] = name
    return out


def _seeded_split(y: np.ndarray, labelled: np.ndarray, val_fraction: float, test_fraction: float,
                  seed: int) -> np.ndarray:
    idx = np.flatnonzero(labelled)
    n_lab = idx.size
    n_test = math.ceil(test_fraction * n_lab)
    n_val = math.ceil(val_fraction * n_lab)
    if n_lab - n_test - n_val < 1:
        raise DataError(
            f"only {n_lab} labelled rows: cannot make non-empty train/val/test splits with "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}; expected at least 3 "
            "labelled rows (realistically dozens per class); add images"
        )
    out = np.full(y.shape[0], "", dtype="<U5")
    rest, test_idx = _split_once(idx, y[idx], n_test, seed)
    train_idx, val_idx = _split_once(rest, y[rest], n_val, seed)
    out[train_idx] = "train"
    out[val_idx] = "val"
    out[test_idx] = "test"
    return out


def make_splits(
    labels: np.ndarray,
    split: np.ndarray | None = None,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Assign each row to ``"train"``, ``"val"``, ``"test"`` or ``""`` (not used).

    Rules, in order:

    * Rows with a label < 0 are unlabelled and always get ``""``.
    * If ``split`` is given and some labelled row has a split name (``"train"``,
      ``"val"``/``"valid"``/``"validation"``, ``"test"``), the data's own split is
      used as is (names normalised to ``train``/``val``/``test``). Labelled rows with
      ``""`` (no split folder) stay ``""``. If the data has no ``val`` rows, ``val`` is
      carved out of ``train`` (``val_fraction`` of the train rows, seeded, stratified);
      likewise a missing ``test`` is carved out of ``train`` (``test_fraction`` of the
      train rows). Data without ``train`` rows is an error.
    * Otherwise (no ``split``, or no labelled row has a split name) the labelled rows
      are split seeded and stratified: ``ceil(test_fraction * n)`` rows go to test,
      then ``ceil(val_fraction * n)`` rows of the rest go to val, the rest to train.

    Stratification rule: each step is stratified when every class in the pool has at
    least 2 rows and both parts get at least one row per class; otherwise that step
    falls back to a plain seeded shuffle split (no warning). The result depends only
    on ``labels``, ``split``, the fractions and ``seed``.

    Raises :class:`DataError` for no labelled rows, a single class, too few rows to
    make non-empty splits, or unknown split names; :class:`EvaluationError` for
    fractions outside (0, 1) or summing to >= 1, and for a seed that is not a whole
    number in ``[0, MAX_SEED]`` (see :func:`check_seed`).
    """
    val_fraction, test_fraction, seed = _check_split_arguments(val_fraction, test_fraction, seed)
    y = _as_labels(labels)
    labelled = _check_classes(y)
    if split is not None:
        own = np.where(labelled, _normalise_split(split, y.shape[0]), "")
        if np.any(own != ""):
            return _own_split(own, y, val_fraction, test_fraction, seed)
        # no labelled row has a split folder: make our own split
    return _seeded_split(y, labelled, val_fraction, test_fraction, seed)


def inner_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(fit, val)`` of a seeded, stratified (where possible) hold-out of ``labels``:
    ``ceil(val_fraction * n)`` rows for validation, at least one row on each side."""
    y = np.asarray(labels)
    n = y.shape[0]
    if n < 2:
        raise DataError(f"only {n} training row(s): cannot hold out a validation split; expected at least 2 "
                        "rows; add images or use fewer folds")
    n_val = min(max(1, math.ceil(check_fraction("val_fraction", val_fraction) * n)), n - 1)
    return _split_once(np.arange(n), y, n_val, check_seed(seed))


def repeated_stratified_folds(labels: np.ndarray, n_splits: int, n_repeats: int,
                              seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_repeats`` x ``n_splits`` stratified folds of ``labels`` as ``(train, held_out)`` positions.

    Repeat ``r`` shuffles with ``seed + r``; every row is held out exactly once per repeat
    and each fold keeps the class proportions. Raises :class:`EvaluationError` for fewer
    than 2 folds or repeats < 1, :class:`DataError` when a class has fewer rows than folds.
    """
    from sklearn.model_selection import StratifiedKFold  # sklearn stays off import paths that never split

    y = np.asarray(labels)
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise EvaluationError(f"cv={n_splits!r}; expected a whole number of folds >= 2, e.g. --cv 5")
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, (int, np.integer)) or n_repeats < 1:
        raise EvaluationError(f"repeats={n_repeats!r}; expected a whole number of repeats >= 1, e.g. --repeats 2")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < n_splits:
        raise DataError(f"--cv {n_splits} is larger than the smallest class (class {int(classes[counts.argmin()])} "
                        f"has {int(counts.min())} rows outside the test split); expected at most "
                        f"{int(counts.min())} folds; lower --cv or add images of that class")
    seed = check_seed(seed)
    folds = []
    for r in range(int(n_repeats)):
        skf = StratifiedKFold(n_splits=int(n_splits), shuffle=True, random_state=(seed + r) % (MAX_SEED + 1))
        folds.extend((np.asarray(a), np.asarray(b)) for a, b in skf.split(np.zeros((y.shape[0], 1)), y))
    return folds


def split_summary(
    assigned: np.ndarray, *, seed: int, val_fraction: float, test_fraction: float
) -> dict:
    """The ``split`` block of a results record for an assignment from :func:`make_splits`."""
    a = np.asarray(assigned)
    return {
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "n_train": int(np.sum(a == "train")),
        "n_val": int(np.sum(a == "val")),
        "n_test": int(np.sum(a == "test")),
    }
