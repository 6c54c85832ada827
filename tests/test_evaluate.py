"""Tests for featcache.train.evaluate and featcache.train.plots (fast, numpy only)."""
from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    top_k_accuracy_score,
)

from featcache.errors import DataError, FeatcacheError, HeadError
from featcache.train.evaluate import (
    EvaluationError,
    append_result,
    compute_metrics,
    make_splits,
    read_results,
    results_table,
    split_summary,
    sweep,
)


# --------------------------------------------------------------------------- splits


def _labels(n_per_class=(40, 30, 20), unlabelled=0):
    y = np.concatenate([np.full(n, k) for k, n in enumerate(n_per_class)])
    if unlabelled:
        y = np.concatenate([y, np.full(unlabelled, -1)])
    return np.random.default_rng(123).permutation(y)


def test_splits_seeded_reproducible_and_stratified():
    y = _labels((40, 30, 20))
    a = make_splits(y, seed=0)
    b = make_splits(y, seed=0)
    c = make_splits(y, seed=1)
    assert a.dtype.kind == "U"
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(a.tolist()) == {"train", "val", "test"}
    n = len(y)
    assert np.sum(a == "test") == int(np.ceil(0.15 * n))
    assert np.sum(a == "val") == int(np.ceil(0.15 * n))
    # stratified: each class' share in each split stays close to its overall share
    for part in ("train", "val", "test"):
        sel = y[a == part]
        for k, share in zip(range(3), (40 / 90, 30 / 90, 20 / 90)):
            assert abs(np.mean(sel == k) - share) < 0.1, (part, k)


def test_splits_exclude_unlabelled_rows():
    y = _labels((30, 30), unlabelled=17)
    s = make_splits(y, seed=3)
    assert np.all(s[y < 0] == "")
    assert np.all(s[y >= 0] != "")
    # also with the data's own split: an unlabelled row in "train" is not used
    own = np.array(["train"] * len(y), dtype=object)
    own[:10] = "test"
    own[10:20] = "val"
    s2 = make_splits(y, own)
    assert np.all(s2[y < 0] == "")


def test_splits_respect_data_split_and_normalise_names():
    y = _labels((20, 20, 20))
    own = np.array(["train"] * 40 + ["validation"] * 10 + ["test"] * 10)
    s = make_splits(y, own, seed=0)
    assert s[:40].tolist() == ["train"] * 40
    assert s[40:50].tolist() == ["val"] * 10
    assert s[50:].tolist() == ["test"] * 10
    # bytes from HDF5 and "valid" alias; "" rows (no split folder) stay unused
    own_b = np.array([b"train"] * 38 + [b""] * 2 + [b"valid"] * 10 + [b"test"] * 10)
    s = make_splits(y, own_b)
    assert s[38:40].tolist() == ["", ""]
    assert set(s[40:50].tolist()) == {"val"}


def test_splits_carve_val_from_train_when_missing():
    y = _labels((40, 40))
    own = np.array(["train"] * 60 + ["test"] * 20)
    s = make_splits(y, own, val_fraction=0.25, seed=5)
    assert np.all(s[60:] == "test")  # the data's test split is untouched
    assert np.sum(s == "val") == 15  # 25% of the 60 train rows
    assert set(s[:60].tolist()) == {"train", "val"}
    # stratified carve: both classes appear in val
    assert set(y[s == "val"].tolist()) == {0, 1}
    assert np.array_equal(s, make_splits(y, own, val_fraction=0.25, seed=5))


def test_splits_empty_own_split_falls_back_to_seeded():
    y = _labels((20, 20))
    s = make_splits(y, np.array([""] * len(y)), seed=0)
    assert np.array_equal(s, make_splits(y, seed=0))


def test_splits_tiny_classes_fall_back_to_unstratified():
    y = np.array([0] * 20 + [1] * 20 + [2])  # class 2 has a single member
    s = make_splits(y, seed=0)
    assert np.array_equal(s, make_splits(y, seed=0))
    assert set(s.tolist()) == {"train", "val", "test"}


def test_split_summary():
    s = np.array(["train", "train", "val", "test", ""])
    assert split_summary(s, seed=1, val_fraction=0.2, test_fraction=0.3) == {
        "seed": 1, "val_fraction": 0.2, "test_fraction": 0.3, "n_train": 2, "n_val": 1, "n_test": 1,
    }


@pytest.mark.parametrize(
    "kwargs",
    [dict(val_fraction=0.0), dict(val_fraction=1.0), dict(test_fraction=-0.1),
     dict(test_fraction=1.5), dict(val_fraction=0.5, test_fraction=0.5),
     dict(val_fraction=0.7, test_fraction=0.4), dict(val_fraction="abc")],
)
def test_splits_bad_fractions(kwargs):
    with pytest.raises(FeatcacheError) as ei:
        make_splits(_labels(), **kwargs)
    assert "fraction" in str(ei.value)


def test_splits_single_class_and_no_labels():
    with pytest.raises(DataError, match="single class"):
        make_splits(np.array([2] * 30 + [-1] * 5))
    with pytest.raises(DataError, match="none of the"):
        make_splits(np.full(10, -1))
    with pytest.raises(DataError, match="unknown split"):
        make_splits(_labels((5, 5)), np.array(["train"] * 9 + ["holdout"]))
    with pytest.raises(DataError, match="no labelled 'train'"):
        make_splits(_labels((5, 5)), np.array(["test"] * 10))


@pytest.mark.parametrize("seed", [-5, -1, 2**32 - 1, 2**40, 1.5, "3", None, True])
def test_splits_bad_seed_is_one_clear_error(seed):
    # before: a negative seed reached sklearn and raised its InvalidParameterError
    with pytest.raises(EvaluationError) as ei:
        make_splits(_labels(), seed=seed)
    msg = str(ei.value)
    assert f"seed={seed!r}" in msg or f"seed={seed}" in msg
    assert "expected a whole number from 0 to 4294967294" in msg and "--seed 0" in msg


def test_splits_accept_every_valid_seed():
    y = _labels((10, 10))
    for seed in (0, np.int64(7), 7.0, 2**32 - 2):
        assert set(make_splits(y, seed=seed).tolist()) == {"train", "val", "test"}
    own = np.array(["train"] * 20)  # val and test carved with seed and seed + 1
    assert set(make_splits(y, own, seed=2**32 - 2).tolist()) == {"train", "val", "test"}


# --------------------------------------------------------------------------- metrics


def test_metrics_match_sklearn_small_case():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    y_pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 0])
    m = compute_metrics(y_true, y_pred, class_names=["a", "b", "c"])
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert [c["support"] for c in m["per_class"]] == [4, 2, 4]
    assert [c["predicted"] for c in m["per_class"]] == [4, 2, 4]
    assert [c["correct"] for c in m["per_class"]] == [3, 1, 3]
    assert m["per_class"][0]["name"] == "a"
    assert "top5" not in m
    # JSON-serialisable with plain types, round-trips unchanged
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert type(m["accuracy"]) is float and type(m["n"]) is int


def test_metrics_top5_only_with_more_than_five_classes():
    rng = np.random.default_rng(0)
    y6 = np.arange(60) % 6
    p6 = rng.random((60, 6))
    m6 = compute_metrics(y6, p6.argmax(1), p6)
    assert m6["top5"] == pytest.approx(top_k_accuracy_score(y6, p6, k=5))
    y5 = np.arange(50) % 5
    p5 = rng.random((50, 5))
    assert "top5" not in compute_metrics(y5, p5.argmax(1), p5)
    assert "top5" not in compute_metrics(y6, p6.argmax(1))  # no proba
    # classes absent from y_true still count as columns of proba
    y_sub = np.array([0, 1, 2, 0, 1, 2])
    p = rng.random((6, 8))
    m = compute_metrics(y_sub, p.argmax(1), p)
    assert "top5" in m and len(m["confusion_matrix"]) == 8


def test_metrics_errors():
    with pytest.raises(EvaluationError, match="rows"):
        compute_metrics([0, 1], [0])
    with pytest.raises(EvaluationError, match="class_names"):
        compute_metrics([0, 3], [0, 1], class_names=["a", "b"])
    with pytest.raises(EvaluationError, match="unlabelled"):
        compute_metrics([0, -1], [0, 1])


# --------------------------------------------------------------------------- sweeps


class ConstantClassifier:
    """Predicts params['c'] for every row (fit is a no-op)."""

    def __init__(self, c):
        self.c = c

    def fit(self, X, y):
        self.fitted_ = True
        return self

    def predict(self, X):
        return np.full(len(X), self.c)


def _make_constant(params):
    return ConstantClassifier(**params)


def test_sweep_scores_on_val_only_and_picks_val_best():
    X_train = np.zeros((10, 2))
    y_train = np.array([0] * 5 + [1] * 5)
    X_val = np.zeros((10, 2))
    y_val = np.array([1] * 8 + [0] * 2)  # on val, constant 1 is best
    # (on a test split that is mostly 0, constant 0 would win; sweep never sees it)
    res = sweep(_make_constant, {"c": [0, 1, 2]}, X_train, y_train, X_val, y_val, n_jobs=1)
    assert res.best_params == {"c": 1}
    assert res.best_score == pytest.approx(0.8)
    assert res.best_index == 1
    assert isinstance(res.best_estimator, ConstantClassifier)
    assert res.best_estimator.c == 1 and res.best_estimator.fitted_
    assert [r["params"] for r in res.rows] == [{"c": 0}, {"c": 1}, {"c": 2}]
    assert [r["val_score"] for r in res.rows] == pytest.approx([0.2, 0.8, 0.0])
    assert all(r["fit_seconds"] >= 0 for r in res.rows)
    json.dumps(res.to_dict())


def test_sweep_tie_goes_to_first_in_grid_order():
    X = np.zeros((4, 1))
    y = np.array([0, 0, 1, 1])
    res = sweep(_make_constant, {"c": [1, 0]}, X, y, X, y, n_jobs=1)
    assert res.best_params == {"c": 1}


def test_sweep_parallel_loky_matches_sequential():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    y = (X[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)
    Xtr, ytr, Xva, yva = X[:80], y[:80], X[80:], y[80:]
    grid = {"C": [1e-4, 1.0], "fit_intercept": [True, False]}
    make = functools.partial(_make_logreg, max_iter=200)
    seq = sweep(make, grid, Xtr, ytr, Xva, yva, n_jobs=1)
    par = sweep(make, grid, Xtr, ytr, Xva, yva, n_jobs=2)
    assert [r["params"] for r in par.rows] == [r["params"] for r in seq.rows]
    assert [r["val_score"] for r in par.rows] == pytest.approx([r["val_score"] for r in seq.rows])
    assert par.best_params == seq.best_params
    assert par.best_estimator.predict(Xva).shape == (40,)


class TorchLinear:
    """A tiny torch softmax classifier, to check sweeps with torch estimators in loky workers."""

    def __init__(self, lr, epochs=30):
        self.lr, self.epochs = lr, epochs

    def fit(self, X, y):
        import torch

        torch.manual_seed(0)
        Xt = torch.from_numpy(np.asarray(X, dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.model_ = torch.nn.Linear(Xt.shape[1], int(yt.max()) + 1)
        opt = torch.optim.SGD(self.model_.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(self.model_(Xt), yt).backward()
            opt.step()
        self.threads_ = torch.get_num_threads()
        return self

    def predict(self, X):
        import torch

        with torch.no_grad():
            return self.model_(torch.from_numpy(np.asarray(X, dtype=np.float32))).argmax(1).numpy()


@pytest.mark.slow  # ~5-10 s: each loky worker imports torch
def test_sweep_torch_estimator_in_loky_workers():
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    res = sweep(lambda p: TorchLinear(**p), {"lr": [0.0, 0.5]}, X[:150], y[:150], X[150:], y[150:],
                n_jobs=2)
    assert res.best_params == {"lr": 0.5}  # lr=0 leaves the random init: worse on val
    assert res.best_score > 0.8
    assert res.best_estimator.threads_ == max(1, (os.cpu_count() or 1) // 2)
    assert (res.best_estimator.predict(X[150:]) == y[150:]).mean() == pytest.approx(res.best_score)


class _NoParallel:
    """Stands in for joblib.Parallel: fails the test if a sweep starts worker processes."""

    def __init__(self, *a, **k):
        raise AssertionError("the sweep started worker processes")


def test_sweep_auto_keeps_fast_fits_in_process(monkeypatch):
    # before: n_jobs=-1 always started loky workers (seconds) even for fits of milliseconds
    import joblib

    monkeypatch.setattr(joblib, "Parallel", _NoParallel)
    X, y = np.zeros((6, 1)), np.array([0, 0, 0, 1, 1, 1])
    for n_jobs in (-1, None):
        res = sweep(_make_constant, {"c": [0, 1, 2, 3]}, X, y, X, y, n_jobs=n_jobs)
        assert (res.in_process, res.workers) == (4, 1)
        assert [r["params"] for r in res.rows] == [{"c": c} for c in range(4)]
    assert sweep(_make_constant, {"c": [0, 1]}, X, y, X, y).in_process == 2  # the default is auto


def test_sweep_auto_goes_parallel_when_it_pays_off(monkeypatch):
    import featcache.train.sweeps as sweeps_mod

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    y = (X[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)
    Xtr, ytr, Xva, yva = X[:80], y[:80], X[80:], y[80:]
    grid = {"C": [1e-4, 1e-2, 1.0]}
    make = functools.partial(_make_logreg, max_iter=200)
    monkeypatch.setattr(sweeps_mod, "WORKER_START_S", -1e9)  # starting workers "costs nothing"
    par = sweep(make, grid, Xtr, ytr, Xva, yva, n_jobs=-1)
    assert par.in_process == 1 and par.workers == 2  # the first fit is timed here, the rest in workers
    seq = sweep(make, grid, Xtr, ytr, Xva, yva, n_jobs=1)
    assert (seq.in_process, seq.workers) == (3, 1)
    assert [r["params"] for r in par.rows] == [r["params"] for r in seq.rows]
    assert [r["val_score"] for r in par.rows] == pytest.approx([r["val_score"] for r in seq.rows])
    assert par.best_index == seq.best_index
    assert par.to_dict()["workers"] == 2


def test_parallel_pays_off_rule(monkeypatch):
    import featcache.train.sweeps as sweeps_mod

    monkeypatch.setattr(sweeps_mod, "WORKER_START_S", 3.0)
    pays = sweeps_mod._parallel_pays_off
    assert not pays(0.1, 3, 2)  # logreg --sweep on digits: 0.3 s left
    assert not pays(10.0, 1, 2) and not pays(10.0, 5, 1)  # one fit left / one worker
    assert pays(2.0, 5, 2)  # 10 s here vs 3 + 6 s on two workers


def test_sweep_on_lazy_arrays_stays_in_process(monkeypatch, tmp_path):
    # --from-disk: parallel workers would each get a copy of the whole training set
    import h5py
    import joblib

    monkeypatch.setattr(joblib, "Parallel", _NoParallel)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["X"] = X
    with h5py.File(tmp_path / "f.h5", "r") as f:
        res = sweep(_make_constant, {"c": [0, 1, 2]}, f["X"], y, f["X"], y, n_jobs=2)
    assert (res.in_process, res.workers) == (3, 1)


@pytest.mark.parametrize("n_jobs", [0, 1.5, "2", True])
def test_sweep_bad_n_jobs(n_jobs):
    X, y = np.zeros((4, 1)), np.array([0, 0, 1, 1])
    with pytest.raises(EvaluationError, match=r"n_jobs=.*expected a non-zero integer"):
        sweep(_make_constant, {"c": [0]}, X, y, X, y, n_jobs=n_jobs)


def _make_logreg(params, max_iter=100):
    return LogisticRegression(max_iter=max_iter, **params)


class _Broken:
    def fit(self, X, y):
        raise RuntimeError("boom")

    def predict(self, X):  # pragma: no cover
        return np.zeros(len(X))


def test_sweep_errors():
    X, y = np.zeros((4, 1)), np.array([0, 0, 1, 1])
    with pytest.raises(EvaluationError, match="not a list"):
        sweep(_make_constant, {"c": 1}, X, y, X, y, n_jobs=1)
    with pytest.raises(EvaluationError, match="empty list"):
        sweep(_make_constant, {"c": []}, X, y, X, y, n_jobs=1)
    with pytest.raises(EvaluationError, match="rows"):
        sweep(_make_constant, {"c": [0]}, X, y[:3], X, y, n_jobs=1)
    with pytest.raises(HeadError, match="boom"):
        sweep(lambda p: _Broken(), {"a": [1]}, X, y, X, y, n_jobs=1)


# --------------------------------------------------------------------------- results log


def _record(fk="abcdef0123456789", head="mlp", test_acc=0.5, val_acc=0.4, fit_s=1.0):
    return {
        "feature_key": fk,
        "identity": {"backbone": "resnet18", "layer": "avgpool"},
        "view": "/tmp/x.h5",
        "head": head,
        "params": {"lr": 0.01, "hidden": np.int64(64)},
        "split": {"seed": 0, "val_fraction": 0.15, "test_fraction": 0.15,
                  "n_train": 70, "n_val": 15, "n_test": 15},
        "metrics": {"val": {"accuracy": val_acc}, "test": {"accuracy": np.float32(test_acc),
                                                          "balanced_accuracy": test_acc,
                                                          "macro_f1": float("nan")}},
        "timings": {"fit_s": fit_s, "predict_s": 0.1},
        "versions": {"numpy": np.__version__},
    }


def test_results_log_append_read_filter_with_malformed_line(tmp_path, caplog):
    log = tmp_path / "sub" / "dir" / "results.jsonl"  # parent folders are created
    assert read_results(log) == []  # missing log
    written = append_result(log, _record(fk="aaaa1111", test_acc=0.5))
    assert written["timestamp"].endswith("Z") and "T" in written["timestamp"]
    assert written["featcache_version"]
    with open(log, "a") as fh:
        fh.write('{"feature_key": "broken", \n')  # malformed
        fh.write("[1, 2, 3]\n")  # valid JSON, not an object
        fh.write("\n")  # blank: ignored, not counted
    append_result(log, _record(fk="bbbb2222", test_acc=0.9, head="logreg"))
    with open(log, "a") as fh:
        fh.write('{"truncated": ')  # no newline: a writer died mid-line
    append_result(log, _record(fk="aaaa1111", test_acc=0.7, head="svm"))

    recs = read_results(log)
    assert [r["feature_key"] for r in recs] == ["aaaa1111", "bbbb2222", "aaaa1111"]
    assert recs.malformed == 3
    assert "malformed" in caplog.text
    assert recs[0]["params"]["hidden"] == 64
    assert recs[0]["metrics"]["test"]["macro_f1"] is None  # NaN -> null
    assert [r["head"] for r in read_results(log, feature_key="aaaa1111")] == ["mlp", "svm"]
    assert [r["head"] for r in read_results(log, feature_key="bbbb")] == ["logreg"]  # prefix
    assert read_results(log, feature_key="zzz") == []

    rows = results_table(recs)
    assert [r["test_acc"] for r in rows] == pytest.approx([0.9, 0.7, 0.5])
    assert rows[0]["backbone"] == "resnet18"
    assert rows[0]["head"] == "logreg"
    assert rows[0]["params"] == "lr=0.01, hidden=64"
    assert set(rows[0]) == {"feature_key", "backbone", "data", "head", "params", "val_acc",
                            "test_acc", "balanced_acc", "macro_f1", "fit_s"}
    assert rows[0]["data"] == "x"  # no "data" in the record: from the view's file name
    with pytest.raises(EvaluationError, match="sort_by"):
        results_table(recs, sort_by="nonexistent.path")
    assert results_table([]) == []


def test_results_table_sorting():
    recs = [
        _record(fk="k1" * 10, test_acc=0.5, val_acc=0.9, fit_s=3.0),
        _record(fk="k2" * 10, test_acc=0.8, val_acc=0.1, fit_s=1.0),
        _record(fk="k3" * 10, test_acc=0.6, val_acc=0.5, fit_s=2.0),
        {"feature_key": "k4", "head": "x"},  # no metrics: sorts last
    ]
    assert [r["feature_key"] for r in results_table(recs)] == ["k2" * 10, "k3" * 10, "k1" * 10, "k4"]
    assert [r["val_acc"] for r in results_table(recs, sort_by="val.accuracy")][:3] == [0.9, 0.5, 0.1]
    assert [r["val_acc"] for r in results_table(recs, sort_by="val_acc")][:3] == [0.9, 0.5, 0.1]
    # timings: fastest first
    assert [r["fit_s"] for r in results_table(recs, sort_by="fit_s")][:3] == [1.0, 2.0, 3.0]
    assert [r["fit_s"] for r in results_table(recs, sort_by="timings.fit_s")][:3] == [1.0, 2.0, 3.0]


def test_results_data_column_and_filter(tmp_path):
    # two data sets under one feature key were ranked together with nothing to tell them apart
    from featcache.train.results import no_results_message

    log = tmp_path / "results.jsonl"
    fk = "resnet18-75956466f1ec"
    a = {**_record(fk=fk, test_acc=0.9), "view": f"/c/features/{fk}/views/digits-0123abcd.h5"}
    b = {**_record(fk=fk, test_acc=0.5), "view": f"/c/features/{fk}/views/my-pets-99aa.h5", "data": "my-pets"}
    c = {**_record(fk="other-000000000000", test_acc=0.7), "data": "digits"}
    for rec in (a, b, c):
        append_result(log, rec)
    rows = results_table(read_results(log))
    assert [r["data"] for r in rows] == ["digits", "digits", "my-pets"]
    assert [r["test_acc"] for r in rows] == pytest.approx([0.9, 0.7, 0.5])
    assert [r["test_acc"] for r in results_table(read_results(log, data="my-pets"))] == [0.5]
    on_digits = read_results(log, feature_key=fk[:8], data="digits")
    assert [r["test_acc"] for r in results_table(on_digits)] == pytest.approx([0.9])
    assert read_results(log, feature_key=f"{fk[:8]}:digits") == on_digits  # KEY:DATA, as for --features
    with pytest.raises(EvaluationError, match="names the data"):
        read_results(log, feature_key=f"{fk}:digits", data="my-pets")

    everything = read_results(log)
    assert everything.total == 3 and everything.data_names == ["digits", "my-pets"]
    assert no_results_message(read_results(tmp_path / "missing.jsonl")) == \
        "no results yet; run `featcache fit-head` first"
    msg = no_results_message(read_results(log, feature_key="vgg16"))
    assert "'vgg16'" in msg and "3 results" in msg and fk in msg and "other-000000000000" in msg
    assert "no results yet" not in msg
    msg = no_results_message(read_results(log, feature_key=fk, data="cifar"))
    assert "'cifar'" in msg and "digits, my-pets" in msg and "no results yet" not in msg


def test_results_table_params_show_tuples_as_cli_values():
    rec = {**_record(), "params": {"hidden_sizes": [512, 256], "dropout": 0.2, "center": True}}
    assert results_table([rec])[0]["params"] == "hidden_sizes=512:256, dropout=0.2, center=True"


def _append_many(log_path, worker, n):
    for i in range(n):
        append_result(log_path, {"feature_key": f"w{worker}", "i": i, "pad": "x" * (1500 * (i % 7))})


def test_concurrent_appends_from_processes(tmp_path):
    log = tmp_path / "results.jsonl"
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    procs = [ctx.Process(target=_append_many, args=(str(log), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 200
    recs = [json.loads(line) for line in lines]  # every line is valid JSON
    for w in range(4):
        assert sorted(r["i"] for r in recs if r["feature_key"] == f"w{w}") == list(range(50))
    assert read_results(log).malformed == 0


# --------------------------------------------------------------------------- plots


def _is_png(path):
    data = open(path, "rb").read()
    return len(data) > 100 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_confusion_matrix_png(tmp_path):
    from featcache.train.plots import plot_confusion_matrix

    m = compute_metrics([0, 1, 2, 2, 1], [0, 1, 2, 1, 1], class_names=["cat", "dog", "fox"])
    out = plot_confusion_matrix(m["confusion_matrix"], m["class_names"], tmp_path / "p" / "cm.png",
                                title="test")
    assert _is_png(out)
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["cm.png"]  # no temp file left


def test_plot_scatter_png(tmp_path):
    from featcache.train.plots import plot_scatter

    rows = results_table([
        _record(fk="a", head="mlp", test_acc=0.8, fit_s=2.0),
        _record(fk="b", head="logreg", test_acc=0.7, fit_s=0.1),
        _record(fk="c", head="logreg", test_acc=0.75, fit_s=0.0),  # skipped with logx
    ])
    out = plot_scatter(rows, "fit_s", "test_acc", "head", tmp_path / "scatter.png", logx=True)
    assert _is_png(out)


def test_plot_errors(tmp_path):
    from featcache.train.plots import plot_confusion_matrix, plot_scatter

    with pytest.raises(FeatcacheError, match="square"):
        plot_confusion_matrix([[1, 2, 3]], ["a"], tmp_path / "x.png")
    with pytest.raises(FeatcacheError, match="class_names"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a"], tmp_path / "x.png")
    with pytest.raises(FeatcacheError, match="format"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], tmp_path / "x.nope")
    with pytest.raises(FeatcacheError, match="none of the"):
        plot_scatter([{"a": 1}], "x", "y", "a", tmp_path / "s.png")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("name, grid, other", [
    ("linear", {"lr": [1e-3, 1e-2], "weight_decay": [0.0, 1e-2]}, {"lr": [1e-3, 1e-2], "max_epochs": [2, 3]}),
    # two hidden layers: not one network of side-by-side layers
    ("mlp", {"hidden_sizes": [(8,), (16,)], "dropout": [0.0, 0.2]}, {"hidden_sizes": [(8,), (8, 4)]}),
], ids=["linear", "mlp"])
def test_a_torch_grid_is_trained_at_once(monkeypatch, name, grid, other):
    import joblib

    from featcache.train.heads import make_head

    monkeypatch.setattr(joblib, "Parallel", _NoParallel)
    cls = type(make_head(name))
    calls = []
    real = cls.fit_together.__func__
    monkeypatch.setattr(cls, "fit_together", classmethod(lambda c, h, X, y: calls.append(len(h)) or real(c, h, X, y)))
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 6)).astype(np.float32)
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)
    data = (X[:200], y[:200], X[200:], y[200:])
    res = sweep(lambda p: make_head(name, max_epochs=5, **p), grid, *data, n_jobs=2)
    assert calls == [4] and res.workers == 1 and len(res.rows) == 4
    alone = make_head(name, max_epochs=5, **res.best_params).fit(X[:200], y[:200])
    assert (alone.predict(X[200:]) == y[200:]).mean() == pytest.approx(res.best_score)
    calls.clear()  # a grid that also varies another parameter is fitted point by point
    sweep(lambda p: make_head(name, **{"max_epochs": 2, **p}), other, *data, n_jobs=1)
    assert calls == []
