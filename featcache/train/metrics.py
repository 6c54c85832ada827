"""Classification metrics: :func:`compute_metrics` returns a JSON-serialisable dict.

This dict is what a results record holds under ``metrics.val`` and ``metrics.test``
(see :mod:`featcache.train.results`). Works on numpy arrays only; sklearn is imported
inside the function.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from featcache.train.splits import EvaluationError, _as_class_indices

__all__ = ["compute_metrics"]


def _as_1d_int(name: str, values: Any) -> np.ndarray:
    return _as_class_indices(
        values,
        lambda shape: EvaluationError(
            f"{name} has shape {shape}; expected a 1-d array of class indices; "
            "pass predictions as indices (argmax of probabilities), not one-hot"
        ),
        lambda dtype: EvaluationError(
            f"{name} has dtype {dtype}; expected integer class indices; "
            "map class names to indices first"
        ),
    )


def _f(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def compute_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Classification metrics as a JSON-serialisable dict.

    Classes are the integer indices ``0..C-1`` where ``C`` is ``len(class_names)``, else
    ``proba.shape[1]``, else ``max(y_true, y_pred) + 1``. ``proba[:, k]`` is the score of
    class ``k``.

    Keys: ``n``, ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present
    in ``y_true``), ``macro_f1`` (over the classes present in ``y_true`` or ``y_pred``,
    sklearn's default), ``top5`` (only when ``C > 5`` and ``proba`` is given),
    ``confusion_matrix`` (rows = true class, columns = predicted class, all ``C`` classes),
    ``class_names`` and ``per_class`` (one entry per class: ``class``, ``name``, ``support``
    = true count, ``predicted``, ``correct``, ``precision`` and ``recall`` (``None`` when
    undefined)). Floats are plain Python floats; no NaN is ever returned.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        top_k_accuracy_score,
    )

    yt = _as_1d_int("y_true", y_true)
    yp = _as_1d_int("y_pred", y_pred)
    if yt.shape != yp.shape:
        raise EvaluationError(
            f"y_true has {yt.shape[0]} rows but y_pred has {yp.shape[0]}; expected one prediction "
            "per row; predict on the same rows you evaluate"
        )
    if yt.size == 0:
        raise EvaluationError(
            "y_true is empty; expected at least one labelled row to evaluate; "
            "check the split is not empty"
        )
    if yt.min() < 0 or yp.min() < 0:
        bad = int(min(yt.min(), yp.min()))
        raise EvaluationError(
            f"label {bad} found in y_true/y_pred; expected class indices >= 0; "
            "drop unlabelled rows (label < 0) before computing metrics"
        )

    P = None
    if proba is not None:
        P = np.asarray(proba, dtype=np.float64)
        if P.ndim != 2 or P.shape[0] != yt.shape[0]:
            raise EvaluationError(
                f"proba has shape {P.shape}; expected (n_rows={yt.shape[0]}, n_classes); "
                "pass the per-class probabilities of the same rows"
            )
    max_label = int(max(yt.max(), yp.max()))
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        n_classes = len(class_names)
        if max_label >= n_classes:
            raise EvaluationError(
                f"label {max_label} found but only {n_classes} class_names were given; expected "
                "one name per class index; pass the full class list of the view"
            )
    elif P is not None:
        n_classes = P.shape[1]
    else:
        n_classes = max_label + 1
    if P is not None and P.shape[1] != n_classes:
        raise EvaluationError(
            f"proba has {P.shape[1]} columns but there are {n_classes} classes; expected one "
            "column per class; pass probabilities over all classes in class-index order"
        )
    if max_label >= n_classes:
        raise EvaluationError(
            f"label {max_label} found but proba has only {n_classes} columns; expected one "
            "column per class index"
        )
    if class_names is None:
        class_names = [str(i) for i in range(n_classes)]
    labels = np.arange(n_classes)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = accuracy_score(yt, yp)
        bacc = balanced_accuracy_score(yt, yp)
        mf1 = f1_score(yt, yp, average="macro", zero_division=0)
        cm = confusion_matrix(yt, yp, labels=labels)

    out: dict[str, Any] = {
        "n": int(yt.shape[0]),
        "accuracy": _f(acc),
        "balanced_accuracy": _f(bacc),
        "macro_f1": _f(mf1),
    }
    if P is not None and n_classes > 5:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["top5"] = _f(top_k_accuracy_score(yt, P, k=5, labels=labels))
    out["confusion_matrix"] = [[int(v) for v in row] for row in cm]
    out["class_names"] = list(class_names)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    correct = np.diag(cm)
    out["per_class"] = [
        {
            "class": int(k),
            "name": class_names[k],
            "support": int(support[k]),
            "predicted": int(predicted[k]),
            "correct": int(correct[k]),
            "precision": float(correct[k] / predicted[k]) if predicted[k] else None,
            "recall": float(correct[k] / support[k]) if support[k] else None,
        }
        for k in range(n_classes)
    ]
    return out

