"""Intervals and the corrected resampled t-test against known values."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import balanced_accuracy_score, f1_score

from featcache.errors import EvaluationError
from featcache.train.metrics import compute_metrics
from featcache.train.stats import (
    balanced_accuracy_of,
    bootstrap_intervals,
    corrected_ttest,
    cv_interval,
    macro_f1_of,
    wilson_interval,
    with_ci,
)


def test_wilson_on_fixed_counts_matches_the_formula_and_scipy():
    # 32 of 48 right: p = 2/3; by hand with z = 1.959964, z^2 = 3.841459:
    # centre = (p + z^2/96) / (1 + z^2/48) = 0.706682 / 1.080030 = 0.654317
    # half-width = z / (1 + z^2/48) * sqrt(p(1-p)/48 + z^2/(4*48^2)) = 1.814731 * 0.071036 = 0.128912
    lo, hi = wilson_interval(32, 48)
    assert (lo, hi) == pytest.approx((0.525405, 0.783229), abs=5e-6)
    ref = sps.binomtest(32, 48).proportion_ci(0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (1, 1), (23, 48), (700, 1000)])
def test_wilson_matches_scipy_at_the_edges(k, n):
    ref = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx([ref.low, ref.high], abs=1e-12)


def test_wilson_refuses_bad_counts():
    for k, n in ((5, 4), (-1, 4), (0, 0)):
        with pytest.raises(EvaluationError, match="expected 0 <= successes <= n"):
            wilson_interval(k, n)
    with pytest.raises(EvaluationError, match="confidence level"):
        wilson_interval(1, 2, level=1.5)


def test_the_issue_example_is_about_plus_minus_0_14():
    lo, hi = wilson_interval(23, 48)  # 0.479 on a 48-image test split
    assert hi - lo == pytest.approx(0.27, abs=0.01)


def _rows():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 60)
    p = np.where(rng.random(60) < 0.6, y, rng.integers(0, 4, 60))
    return y, p


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_confusion_statistics_equal_sklearn():
    y, p = _rows()
    cm = np.bincount(y * 4 + p, minlength=16).reshape(4, 4)
    assert balanced_accuracy_of(cm) == pytest.approx(balanced_accuracy_score(y, p))
    assert macro_f1_of(cm) == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    # a class predicted but never true, one true but never predicted
    y2, p2 = np.array([0, 0, 1, 1, 2]), np.array([0, 3, 1, 1, 1])
    cm2 = np.bincount(y2 * 4 + p2, minlength=16).reshape(4, 4)
    assert balanced_accuracy_of(cm2) == pytest.approx(balanced_accuracy_score(y2, p2))
    assert macro_f1_of(cm2) == pytest.approx(f1_score(y2, p2, average="macro", zero_division=0))


def test_bootstrap_with_a_fixed_seed_equals_a_plain_loop():
    y, p = _rows()
    got = bootstrap_intervals(y, p, {"bacc": balanced_accuracy_of, "f1": macro_f1_of}, n_boot=500, seed=3)
    rows = np.random.default_rng(3).integers(0, 60, size=(500, 60))
    bacc = [balanced_accuracy_score(y[r], p[r]) for r in rows]
    f1 = [f1_score(y[r], p[r], average="macro", zero_division=0) for r in rows]
    assert got["bacc"] == pytest.approx(list(np.quantile(bacc, [0.025, 0.975])), abs=1e-12)
    assert got["f1"] == pytest.approx(list(np.quantile(f1, [0.025, 0.975])), abs=1e-12)
    # the same seed, the same interval; another seed, another one
    again = bootstrap_intervals(y, p, {"bacc": balanced_accuracy_of}, n_boot=500, seed=3)
    assert again["bacc"] == got["bacc"]
    assert bootstrap_intervals(y, p, {"bacc": balanced_accuracy_of}, n_boot=500, seed=4)["bacc"] != got["bacc"]


def test_bootstrap_known_value_and_blocks():
    y, p = _rows()
    got = bootstrap_intervals(y, p, {"bacc": balanced_accuracy_of}, n_boot=1000, seed=0)["bacc"]
    assert got == pytest.approx([0.5994, 0.8361], abs=5e-4)  # recorded once; guards against silent changes
    assert got[0] < balanced_accuracy_score(y, p) < got[1]
    # large inputs are resampled in blocks: still valid intervals around the point estimate
    big_y = np.tile(y, 2000)
    big_p = np.tile(p, 2000)
    lo, hi = bootstrap_intervals(big_y, big_p, {"bacc": balanced_accuracy_of}, n_boot=50, seed=0)["bacc"]
    assert lo < balanced_accuracy_score(y, p) < hi and hi - lo < 0.02


def test_compute_metrics_carries_intervals_beside_each_metric():
    y, p = _rows()
    rng = np.random.default_rng(0)
    proba = rng.random((60, 6))
    proba[np.arange(60), p] += 2
    m = compute_metrics(y, p, proba)
    assert m["accuracy_ci95"] == wilson_interval(int(np.sum(y == p)), 60)
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "top5"):
        lo, hi = m[f"{k}_ci95"]
        assert 0 <= lo <= m[k] <= hi <= 1, k
    assert m["top5_ci95"] == wilson_interval(round(m["top5"] * 60), 60)
    assert compute_metrics(y, p, proba) == m  # seeded: the same call, the same intervals


def test_corrected_ttest_worked_example():
    # 5-fold CV (1 repeat): n_test / n_train = 1/4 per fold
    a = [0.80, 0.82, 0.78, 0.85, 0.81]
    b = [0.78, 0.80, 0.79, 0.80, 0.79]
    # d = [0.02, 0.02, -0.01, 0.05, 0.02]; mean 0.02; s^2 = (0 + 0 + 0.03^2 + 0.03^2 + 0) / 4 = 0.00045
    # corrected variance (1/5 + 1/4) * 0.00045 = 0.0002025; t = 0.02 / sqrt(0.0002025) = 1.405457
    res = corrected_ttest(a, b, 1 / 4)
    assert res.mean_difference == pytest.approx(0.02)
    assert res.t == pytest.approx(1.405457, abs=1e-6)
    assert res.dof == 4
    assert res.p_value == pytest.approx(2 * sps.t.sf(1.405457, 4), abs=1e-6)
    assert 0.23 < res.p_value < 0.24
    # the uncorrected t-test on the same numbers is far more confident
    assert sps.ttest_rel(a, b).statistic == pytest.approx(0.02 / math.sqrt(0.00045 / 5))
    half = sps.t.ppf(0.975, 4) * math.sqrt(0.0002025)
    assert res.ci95 == pytest.approx([0.02 - half, 0.02 + half])


def test_corrected_ttest_degenerate_cases():
    same = corrected_ttest([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], 0.25)
    assert (same.t, same.p_value) == (0.0, 1.0)
    shifted = corrected_ttest([0.6, 0.7, 0.8], [0.5, 0.6, 0.7], 0.25)
    assert shifted.p_value == 0.0 and shifted.t == math.inf
    with pytest.raises(EvaluationError, match="same folds"):
        corrected_ttest([0.5, 0.6], [0.5, 0.6, 0.7], 0.25)
    with pytest.raises(EvaluationError, match="at least 2"):
        corrected_ttest([0.5], [0.5], 0.25)


def test_cv_interval_uses_the_corrected_variance():
    scores = [0.80, 0.82, 0.78, 0.85, 0.81, 0.79, 0.83, 0.80, 0.84, 0.78]  # 5-fold x 2
    s2 = np.var(scores, ddof=1)
    half = sps.t.ppf(0.975, 9) * math.sqrt((1 / 10 + 1 / 4) * s2)
    assert cv_interval(scores, 1 / 4) == pytest.approx([np.mean(scores) - half, np.mean(scores) + half])
    assert cv_interval([0.99, 1.0, 1.0, 0.98], 1 / 3)[1] == 1.0  # clipped to [0, 1]


def test_with_ci_text():
    assert with_ci(0.6667, [0.5221, 0.7915]) == "0.667 [0.52, 0.79]"
    assert with_ci(0.5, None) == "0.500"
    assert with_ci(None, [0.1, 0.2]) == "-"


def test_results_table_with_intervals_and_its_text():
    from featcache.train.results import format_table_row, results_table

    rec = {"feature_key": "k" * 20, "head": "logreg", "params": {"C": 0.1}, "timings": {"fit_s": 1.234},
           "metrics": {"val": {"accuracy": 0.6667, "accuracy_ci95": [0.5221, 0.7915]},
                       "test": {"accuracy": 0.479, "accuracy_ci95": [0.34, 0.62], "balanced_accuracy": 0.5,
                                "macro_f1": 0.45, "macro_f1_ci95": [0.3, 0.6]}}}
    old = {**rec, "metrics": {"test": {"accuracy": 0.4}}}  # written before intervals existed
    plain = results_table([rec])
    assert "val_acc_ci95" not in plain[0]  # the plain table keeps its columns
    rows = results_table([rec, old], intervals=True)
    assert rows[0]["val_acc_ci95"] == [0.5221, 0.7915] and rows[0]["balanced_acc_ci95"] is None
    assert rows[1]["test_acc_ci95"] is None
    text = format_table_row(rows[0])
    assert text["val_acc"] == "0.667 [0.52, 0.79]" and text["test_acc"] == "0.479 [0.34, 0.62]"
    assert text["balanced_acc"] == "0.500" and text["fit_s"] == "1.23" and "val_acc_ci95" not in text
    assert format_table_row(rows[1])["val_acc"] == "-"
