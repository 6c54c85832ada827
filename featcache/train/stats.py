"""Confidence intervals and paired tests for classifier scores.

* :func:`wilson_interval`: the Wilson score interval of a proportion (accuracy, top-5
  accuracy: a count of hits out of ``n`` rows).
* :func:`bootstrap_intervals`: a seeded percentile bootstrap over the evaluated rows for
  metrics that are not proportions (balanced accuracy, macro-F1); the resamples are
  drawn as whole confusion matrices, vectorised with numpy.
* :func:`corrected_ttest` and :func:`cv_interval`: the corrected resampled t-test of
  Nadeau and Bengio (2003, "Inference for the generalization error", Machine Learning
  52:239-281) and the matching interval of a mean cross-validation score. Repeated
  k-fold scores share most of their training rows, so the plain t-test's variance
  ``s^2 / J`` is far too small; the correction uses ``(1/J + n_test/n_train) s^2``.
* :func:`with_ci`: ``0.667 [0.52, 0.79]``, the way tables print a value and its interval.

Intervals are two-sided 95 % (``level=0.95``) and returned as ``[lo, hi]`` lists of plain
floats, clipped to ``[0, 1]`` for scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Mapping, Sequence

import numpy as np

from featcache.errors import EvaluationError

__all__ = ["BOOTSTRAP_RESAMPLES", "PairedTest", "balanced_accuracy_of", "bootstrap_intervals", "corrected_ttest",
           "cv_interval", "macro_f1_of", "wilson_interval", "with_ci"]

#: Resamples of :func:`bootstrap_intervals` unless told otherwise.
BOOTSTRAP_RESAMPLES = 1000
#: Largest number of integers one block of resampled rows or confusion matrices may hold.
_BLOCK_CELLS = 1 << 22
#: Variances (and mean differences) at most this small are rounding noise of equal scores.
_ZERO_VARIANCE = 1e-20


def _check_level(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise EvaluationError(f"level={level!r} is out of range; expected a confidence level strictly between 0 "
                              "and 1, e.g. 0.95")
    return float(level)


def _clip01(lo: float, hi: float) -> list[float]:
    return [float(min(max(lo, 0.0), 1.0)), float(min(max(hi, 0.0), 1.0))]


def wilson_interval(successes: int, n: int, level: float = 0.95) -> list[float]:
    """Wilson score interval of the proportion ``successes / n`` (Wilson, 1927).

    Unlike the normal ("Wald") interval it stays inside ``[0, 1]`` and does not collapse
    to a point at 0 or ``n`` successes: ``wilson_interval(48, 48)`` is ``[0.926, 1.0]``.
    """
    k, n = int(successes), int(n)
    if n <= 0 or not 0 <= k <= n:
        raise EvaluationError(f"successes={successes!r} out of n={n!r}; expected 0 <= successes <= n and n >= 1; "
                              "pass the number of correct rows and the number of evaluated rows")
    z = NormalDist().inv_cdf(0.5 + _check_level(level) / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = _clip01(centre - half, centre + half)
    return [0.0 if k == 0 else min(lo, p), 1.0 if k == n else max(hi, p)]  # exact ends, no rounding past p


def balanced_accuracy_of(cm: np.ndarray) -> np.ndarray:
    """Balanced accuracy of confusion matrices ``(..., C, C)`` (rows = true class).

    The mean recall over the classes that have true rows, as scikit-learn's
    ``balanced_accuracy_score``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=-1)
    recall = np.divide(np.diagonal(cm, axis1=-2, axis2=-1), support, out=np.zeros_like(support), where=support > 0)
    return recall.sum(axis=-1) / np.maximum((support > 0).sum(axis=-1), 1)


def macro_f1_of(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion matrices ``(..., C, C)``: the mean F1 over the classes that are true or
    predicted at least once, F1 = 0 where a class has no hit (scikit-learn's ``zero_division=0``)."""
    cm = np.asarray(cm, dtype=np.float64)
    both = cm.sum(axis=-1) + cm.sum(axis=-2)
    f1 = np.divide(2 * np.diagonal(cm, axis1=-2, axis2=-1), both, out=np.zeros_like(both), where=both > 0)
    return f1.sum(axis=-1) / np.maximum((both > 0).sum(axis=-1), 1)


def _resampled_confusions(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_boot: int, seed: int):
    """Yield blocks ``(b, C, C)`` of confusion matrices of bootstrap resamples of the rows.

    One block holds every resample when ``n_boot * n`` and ``n_boot * C * C`` are at most
    :data:`_BLOCK_CELLS`; the rows of resample ``i`` are then
    ``np.random.default_rng(seed).integers(0, n, size=(n_boot, n))[i]``.
    """
    n, cells = len(y_true), n_classes * n_classes
    codes = y_true.astype(np.int64) * n_classes + y_pred.astype(np.int64)
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, _BLOCK_CELLS // max(n, cells)))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        rows = rng.integers(0, n, size=(b, n))
        flat = codes[rows] + (np.arange(b, dtype=np.int64) * cells)[:, None]
        yield np.bincount(flat.ravel(), minlength=b * cells).reshape(b, n_classes, n_classes)


def bootstrap_intervals(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    statistics: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    *,
    n_classes: int | None = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Seeded percentile bootstrap intervals of statistics of the confusion matrix.

    ``statistics`` maps a name to a function of confusion matrices ``(b, C, C) -> (b,)``
    (e.g. :func:`balanced_accuracy_of`, :func:`macro_f1_of`). ``n_boot`` resamples of the
    ``n`` evaluated rows (drawn with replacement, ``n`` each) are scored, and the interval
    is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled scores
    (numpy's default linear interpolation). The same ``seed`` gives the same interval.
    """
    yt, yp = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if yt.ndim != 1 or yt.shape != yp.shape or yt.size == 0:
        raise EvaluationError(f"y_true has shape {yt.shape} and y_pred {yp.shape}; expected two 1-d arrays of "
                              "the same non-zero length; pass the labels and predictions of the evaluated rows")
    if int(n_boot) < 1:
        raise EvaluationError(f"n_boot={n_boot!r}; expected a positive number of resamples, e.g. 1000")
    level = _check_level(level)
    c = int(n_classes) if n_classes is not None else int(max(yt.max(), yp.max())) + 1
    scores: dict[str, list[np.ndarray]] = {name: [] for name in statistics}
    for cms in _resampled_confusions(yt, yp, c, int(n_boot), int(seed)):
        for name, fn in statistics.items():
            scores[name].append(np.asarray(fn(cms), dtype=np.float64))
    q = [(1 - level) / 2, (1 + level) / 2]
    return {name: _clip01(*np.quantile(np.concatenate(v), q)) for name, v in scores.items()}


def _t_quantile(level: float, dof: int) -> float:
    from scipy.special import stdtrit  # scipy only for compare's t-tests: results and fit-head stay off it

    return float(stdtrit(dof, 0.5 + level / 2))


def _t_two_sided_p(t: float, dof: int) -> float:
    from scipy.special import stdtr  # scipy only for compare's t-tests: results and fit-head stay off it

    return float(2 * stdtr(dof, -abs(t)))


def _corrected_variance(scores: np.ndarray, test_train_ratio: float) -> float:
    return (1.0 / len(scores) + float(test_train_ratio)) * float(np.var(scores, ddof=1))


def _check_scores(name: str, values, test_train_ratio: float) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size < 2 or not np.all(np.isfinite(arr)):
        raise EvaluationError(f"{name} has {arr.size} value(s); expected at least 2 finite per-fold scores; "
                              "use cv >= 2 folds")
    if not float(test_train_ratio) > 0:
        raise EvaluationError(f"test_train_ratio={test_train_ratio!r}; expected n_test / n_train of one fold, > 0")
    return arr


def cv_interval(fold_scores: Sequence[float], test_train_ratio: float, level: float = 0.95) -> list[float]:
    """Interval of the mean of repeated k-fold scores with Nadeau and Bengio's corrected variance.

    ``mean +- t(level, J - 1) * sqrt((1/J + n_test/n_train) * s^2)`` over the ``J``
    per-fold scores, where ``s^2`` is their sample variance and ``test_train_ratio`` is
    ``n_test / n_train`` of one fold (``1 / (k - 1)`` for k-fold). Clipped to ``[0, 1]``.
    """
    s = _check_scores("fold_scores", fold_scores, test_train_ratio)
    half = _t_quantile(_check_level(level), s.size - 1) * math.sqrt(_corrected_variance(s, test_train_ratio))
    return _clip01(s.mean() - half, s.mean() + half)


@dataclass(frozen=True)
class PairedTest:
    """Outcome of :func:`corrected_ttest`: the mean paired difference, ``t``, its two-sided
    ``p_value`` (``dof`` degrees of freedom) and the interval of the mean difference."""

    mean_difference: float
    t: float
    p_value: float
    dof: int
    ci95: list[float]


def corrected_ttest(scores_a: Sequence[float], scores_b: Sequence[float], test_train_ratio: float) -> PairedTest:
    """Corrected resampled t-test (Nadeau and Bengio, 2003) of paired per-fold scores.

    With ``d_j = a_j - b_j`` over the ``J`` folds (the same folds for both), mean ``d``
    and sample variance ``s^2``: ``t = d / sqrt((1/J + n_test/n_train) * s^2)`` with
    ``J - 1`` degrees of freedom, two-sided p-value. Identical scores give ``t = 0,
    p = 1``; a constant non-zero difference gives ``p = 0``.
    """
    a = _check_scores("scores_a", scores_a, test_train_ratio)
    b = _check_scores("scores_b", scores_b, test_train_ratio)
    if a.shape != b.shape:
        raise EvaluationError(f"scores_a has {a.size} folds but scores_b has {b.size}; expected paired scores on "
                              "the same folds")
    d = a - b
    mean, var, dof = float(d.mean()), _corrected_variance(d, test_train_ratio), d.size - 1
    if var <= _ZERO_VARIANCE:  # the same difference on every fold (up to rounding of the scores)
        mean = 0.0 if abs(mean) <= _ZERO_VARIANCE else mean
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return PairedTest(mean, t, 1.0 if mean == 0.0 else 0.0, dof, [mean, mean])
    t = mean / math.sqrt(var)
    half = _t_quantile(0.95, dof) * math.sqrt(var)
    return PairedTest(mean, t, _t_two_sided_p(t, dof), dof, [mean - half, mean + half])


def with_ci(value: float | None, ci: Sequence[float] | None, digits: int = 3) -> str:
    """``0.667 [0.52, 0.79]``: the value with ``digits`` decimals, its interval with one fewer;
    just the value without an interval, ``-`` without a value."""
    if value is None:
        return "-"
    text = f"{float(value):.{digits}f}"
    if ci is None or len(ci) != 2 or any(v is None for v in ci):
        return text
    d = max(digits - 1, 1)
    return f"{text} [{float(ci[0]):.{d}f}, {float(ci[1]):.{d}f}]"
