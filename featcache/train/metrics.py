"""Classification metrics: :func:`compute_metrics` returns a JSON-serialisable dict.

This dict is what a results record holds under ``metrics.val`` and ``metrics.test``
(see :mod:`featcache.train.results`). Every accuracy-like metric comes with its 95 %
confidence interval under ``<metric>_ci95`` (see :mod:`featcache.train.stats`). Works on
numpy arrays only; sklearn is imported inside the function that uses it.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from featcache.train.splits import EvaluationError, as_class_indices
from featcache.train.stats import balanced_accuracy_of, bootstrap_intervals, macro_f1_of, wilson_interval

__all__ = ["INTERVAL_METRICS", "compute_metrics", "metric_intervals"]

#: Metrics that carry a 95 % interval, under ``<name>_ci95``.
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "top5")


def _as_1d_int(name: str, values: Any) -> np.ndarray:
    return as_class_indices(
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


def _check_rows(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    yt, yp = _as_1d_int("y_true", y_true), _as_1d_int("y_pred", y_pred)
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
    return yt, yp


def _check_proba(proba: Any, n_rows: int) -> np.ndarray | None:
    if proba is None:
        return None
    P = np.asarray(proba, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] != n_rows:
        raise EvaluationError(
            f"proba has shape {P.shape}; expected (n_rows={n_rows}, n_classes); "
            "pass the per-class probabilities of the same rows"
        )
    return P


def _class_names(max_label: int, P: np.ndarray | None, class_names: Sequence[str] | None) -> list[str]:
    """The names of classes ``0..C-1``: ``class_names``, else ``0..C-1`` with ``C`` from ``P`` or the labels."""
    if class_names is not None:
        names = [str(c) for c in class_names]
        if max_label >= len(names):
            raise EvaluationError(
                f"label {max_label} found but only {len(names)} class_names were given; expected "
                "one name per class index; pass the full class list of the view"
            )
        n_classes = len(names)
    else:
        n_classes = P.shape[1] if P is not None else max_label + 1
        names = [str(i) for i in range(n_classes)]
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
    return names


def _top5_hits(yt: np.ndarray, P: np.ndarray) -> int:
    """Rows whose true class is among the 5 highest scores (ties counted as sklearn's top_k_accuracy_score)."""
    from sklearn.metrics import top_k_accuracy_score  # sklearn stays off import paths that do not score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(round(top_k_accuracy_score(yt, P, k=5, labels=np.arange(P.shape[1]), normalize=False)))


def metric_intervals(yt: np.ndarray, yp: np.ndarray, n_classes: int, *, top5_hits: int | None = None,
                     seed: int = 0) -> dict[str, list[float]]:
    """95 % intervals: Wilson for accuracy (and top-5 when ``top5_hits`` is given), a seeded
    bootstrap over the rows for balanced accuracy and macro-F1."""
    n = int(yt.shape[0])
    out = {"accuracy_ci95": wilson_interval(int(np.sum(yt == yp)), n)}
    boot = bootstrap_intervals(yt, yp, {"balanced_accuracy_ci95": balanced_accuracy_of,
                                        "macro_f1_ci95": macro_f1_of}, n_classes=n_classes, seed=seed)
    out.update(boot)
    if top5_hits is not None:
        out["top5_ci95"] = wilson_interval(top5_hits, n)
    return out


def _per_class(cm: np.ndarray, names: list[str]) -> list[dict]:
    support, predicted, correct = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    return [
        {
            "class": int(k),
            "name": names[k],
            "support": int(support[k]),
            "predicted": int(predicted[k]),
            "correct": int(correct[k]),
            "precision": float(correct[k] / predicted[k]) if predicted[k] else None,
            "recall": float(correct[k] / support[k]) if support[k] else None,
        }
        for k in range(len(names))
    ]


def compute_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    *,
    seed: int = 0,
) -> dict:
    """Classification metrics as a JSON-serialisable dict.

    Classes are the integer indices ``0..C-1`` where ``C`` is ``len(class_names)``, else
    ``proba.shape[1]``, else ``max(y_true, y_pred) + 1``. ``proba[:, k]`` is the score of
    class ``k``.

    Keys: ``n``, ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present
    in ``y_true``), ``macro_f1`` (over the classes present in ``y_true`` or ``y_pred``,
    sklearn's default), ``top5`` (only when ``C > 5`` and ``proba`` is given), each with a
    95 % interval ``<metric>_ci95 = [lo, hi]`` (Wilson for ``accuracy`` and ``top5``, a
    bootstrap of 1,000 resamples of the rows seeded with ``seed`` for the other two),
    ``confusion_matrix`` (rows = true class, columns = predicted class, all ``C`` classes),
    ``class_names`` and ``per_class`` (one entry per class: ``class``, ``name``, ``support``
    = true count, ``predicted``, ``correct``, ``precision`` and ``recall`` (``None`` when
    undefined)). Floats are plain Python floats; no NaN is ever returned.
    """
    yt, yp = _check_rows(y_true, y_pred)
    P = _check_proba(proba, yt.shape[0])
    names = _class_names(int(max(yt.max(), yp.max())), P, class_names)
    n_classes = len(names)
    cm = np.bincount(yt * n_classes + yp, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    top5_hits = _top5_hits(yt, P) if P is not None and n_classes > 5 else None
    out: dict[str, Any] = {
        "n": int(yt.shape[0]),
        "accuracy": _f(np.trace(cm) / yt.shape[0]),
        "balanced_accuracy": _f(balanced_accuracy_of(cm)),
        "macro_f1": _f(macro_f1_of(cm)),
    }
    if top5_hits is not None:
        out["top5"] = _f(top5_hits / yt.shape[0])
    out.update(metric_intervals(yt, yp, n_classes, top5_hits=top5_hits, seed=seed))
    out["confusion_matrix"] = [[int(v) for v in row] for row in cm]
    out["class_names"] = names
    out["per_class"] = _per_class(cm, names)
    return out
