"""featcache compare: repeated stratified CV with intervals, paired tests, one test score per head."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import featcache.train.compare as cmp
from featcache.cli import cli
from featcache.errors import DataError, EvaluationError, HeadError, UnknownNameError
from featcache.store.views import Features
from featcache.train.compare import check_compare_arguments, compare, verdict
from featcache.train.plots import plot_comparison
from featcache.train.stats import PairedTest

EXTRACT = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "0"]


def _view(n_per_class=(40, 40, 40), dim=8, seed=0, labels=None) -> Features:
    """Gaussian blobs; the last column is the row number (x 1e-9) so that a test can tell rows apart."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]) if labels is None else labels
    X = rng.normal(size=(len(y), dim)) + 1.5 * np.eye(max(len(n_per_class), 1), dim)[np.maximum(y, 0)]
    X[:, -1] = np.arange(len(y)) * 1e-9
    return Features(features=X.astype(np.float64), labels=np.asarray(y, dtype=np.int64),
                    ids=[f"r{i}" for i in range(len(y))], split=np.array([""] * len(y)),
                    class_names=[f"c{i}" for i in range(max(3, int(np.max(y)) + 1))], feature_key="fake-000000000000",
                    identity={}, path="/tmp/fake.h5", attrs={"data_name": "blobs"})


def _row_ids(X) -> set[int]:
    return set(np.rint(np.asarray(X)[:, -1] * 1e9).astype(int).tolist())


def test_compare_reports_intervals_tests_and_verdicts():
    f = _view()
    res = compare(f, ["logreg", "ncm", "knn"], cv=3, repeats=2, n_jobs=1)
    assert [h.head for h in res.heads][0] == res.best
    assert res.n_cv_rows + res.n_test == 120 and res.n_test == 18
    assert res.test_train_ratio == pytest.approx(0.5, abs=0.02)  # 3-fold: held out / train = 1/2
    for h in res.heads:
        assert len(h.cv_scores) == 6 and len(h.cv_params) == 6
        assert h.cv_accuracy == pytest.approx(np.mean(h.cv_scores))
        lo, hi = h.cv_accuracy_ci95
        assert 0 <= lo <= h.cv_accuracy <= hi <= 1
        lo, hi = h.test_accuracy_ci95
        assert 0 <= lo <= h.test_accuracy <= hi <= 1
        assert {"balanced_accuracy_ci95", "macro_f1_ci95"} <= set(h.test_metrics)
        assert h.fit_s > 0 and h.cv_fit_s > 0
    best, others = res.heads[0], res.heads[1:]
    assert best.p_value is None and "best mean CV accuracy" in best.verdict
    for h in others:
        assert 0 <= h.p_value <= 1 and h.difference_to_best >= 0
        assert h.verdict.startswith(f"{best.head} and {h.head} are not distinguishable") or \
            h.verdict.startswith(f"{best.head} is better than {h.head}")
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["heads"][0]["cv_accuracy_ci95"] == best.cv_accuracy_ci95
    text = res.summary()
    assert "CV_ACCURACY" in text and f"{best.cv_accuracy:.3f} [" in text and "Nadeau and Bengio" in text
    # seeded: the same call, the same numbers
    again = compare(f, ["logreg", "ncm", "knn"], cv=3, repeats=2, n_jobs=1)
    assert [h.cv_scores for h in again.heads] == [h.cv_scores for h in res.heads]


def test_choices_never_see_the_rows_they_are_scored_on(monkeypatch):
    f = _view()
    seen = []
    real = cmp.sweep_grid

    def spy(build, grid, X_train, y_train, X_val, y_val, **kw):
        seen.append((_row_ids(X_train), _row_ids(X_val)))
        return real(build, grid, X_train, y_train, X_val, y_val, **kw)

    monkeypatch.setattr(cmp, "sweep_grid", spy)
    res = compare(f, ["logreg"], cv=3, repeats=1, n_jobs=1)
    all_rows = set(range(120))
    tasks, folds = cmp._tasks(["logreg"], {"logreg": {"C": [1.0]}}, _split(f), f.labels, 3, 1, 0)
    test_rows = set(tasks[-1].held_out.tolist())
    assert len(seen) == 4  # 3 folds + the final choice
    for (fit_ids, val_ids), (_, held) in zip(seen[:3], folds):
        assert not (fit_ids | val_ids) & set(held.tolist())  # the fold it is scored on
        assert not (fit_ids | val_ids) & test_rows and not fit_ids & val_ids
    fit_ids, val_ids = seen[3]
    assert not (fit_ids | val_ids) & test_rows and len(fit_ids | val_ids) == res.n_cv_rows
    held = np.concatenate([b for _, b in folds])  # one repeat: every non-test row held out once
    assert sorted(held.tolist()) == sorted(all_rows - test_rows)


def _split(f):
    from featcache.train.splits import make_splits

    return make_splits(f.labels, f.split, seed=0)


@pytest.mark.slow
def test_workers_give_the_same_result_as_this_process():
    f = _view(n_per_class=(20, 20, 20))
    one = compare(f, ["logreg", "ncm"], cv=3, repeats=1, n_jobs=1)
    two = compare(f, ["logreg", "ncm"], cv=3, repeats=1, n_jobs=2)
    assert two.workers == 2 and one.workers == 1
    assert [h.cv_scores for h in two.heads] == [h.cv_scores for h in one.heads]
    assert [h.test_accuracy for h in two.heads] == [h.test_accuracy for h in one.heads]


def test_verdict_words():
    same = PairedTest(0.004, 0.5, 0.62, 9, [-0.01, 0.02])
    assert verdict("logreg", "mlp", same) == ("logreg and mlp are not distinguishable on this data (mean CV "
                                              "accuracy difference +0.004, p = 0.62)")
    better = PairedTest(0.05, 4.0, 0.003, 9, [0.02, 0.08])
    assert verdict("mlp", "knn", better).startswith("mlp is better than knn on this data (+0.050")


def test_bad_arguments_are_refused_before_any_work():
    with pytest.raises(UnknownNameError, match="logregg"):
        check_compare_arguments("logregg,knn")
    with pytest.raises(HeadError, match="named twice"):
        check_compare_arguments(["knn", "knn"])
    with pytest.raises(HeadError, match="empty name"):
        check_compare_arguments("knn,,logreg")
    with pytest.raises(EvaluationError, match="cv=1"):
        check_compare_arguments("knn", cv=1)
    with pytest.raises(EvaluationError, match="repeats=0"):
        check_compare_arguments("knn", repeats=0)


def test_compare_heads_needs_features_or_data_and_no_augment():
    from featcache.errors import FeatcacheError
    from featcache.specs import BackboneSpec
    from featcache.train.compare import compare_heads

    with pytest.raises(FeatcacheError, match="exactly one of"):
        compare_heads("knn")
    with pytest.raises(FeatcacheError, match="exactly one of"):
        compare_heads("knn", features="x.h5", data="builtin:digits")
    with pytest.raises(FeatcacheError, match="drop --augment"):
        compare_heads("knn", features="x.h5", backbone=BackboneSpec(augment=2))
    with pytest.raises(UnknownNameError, match="did you mean"):  # before anything is read or extracted
        compare_heads("knnn", data="/nonexistent/folder")


def test_bad_data_is_refused():
    with pytest.raises(DataError, match="--cv 10 is larger than the smallest class"):
        compare(_view(n_per_class=(40, 40, 8)), ["ncm"], cv=10, repeats=1)
    with pytest.raises(DataError, match="no labels"):
        compare(_view(labels=np.full(30, -1)), ["ncm"])
    with pytest.raises(DataError, match="single class"):
        compare(_view(labels=np.zeros(30, dtype=int)), ["ncm"])


def test_plot_comparison(tmp_path):
    rows = [{"head": "logreg", "cv_accuracy": 0.9, "cv_accuracy_ci95": [0.85, 0.94], "test_accuracy": 0.88,
             "test_accuracy_ci95": [0.8, 0.93], "fit_s": 0.5},
            {"head": "knn", "cv_accuracy": 0.8, "cv_accuracy_ci95": [0.7, 0.88], "test_accuracy": None,
             "test_accuracy_ci95": None, "fit_s": 0.0}]
    out = plot_comparison(rows, tmp_path / "c.png")
    assert out.stat().st_size > 0
    from featcache.train.plots import PlotError

    with pytest.raises(PlotError, match="cv_accuracy"):
        plot_comparison([{"head": "x"}], tmp_path / "d.png")


# --------------------------------------------------------------------------- the command, end to end


@pytest.fixture(scope="module")
def digits_view(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cmp") / "cache"
    r = CliRunner().invoke(cli, ["extract", "--data", "builtin:digits", *EXTRACT, "--cache", str(cache), "--json"])
    assert r.exit_code == 0, r.output
    return cache, json.loads(r.stdout)["view"]


def test_compare_command_on_digits(digits_view, tmp_path):
    cache, _ = digits_view
    png = tmp_path / "compare.png"
    r = CliRunner().invoke(cli, ["compare", "--data", "builtin:digits", *EXTRACT, "--heads", "logreg,knn,ncm",
                                 "--cv", "3", "--repeats", "1", "--cache", str(cache), "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["data"] == "digits" and doc["cv"] == 3 and doc["n_test"] == 270
    heads = {h["head"]: h for h in doc["heads"]}
    assert set(heads) == {"logreg", "knn", "ncm"} and doc["best"] == doc["heads"][0]["head"]
    for h in heads.values():
        assert h["test_accuracy"] > 0.6 and len(h["test_accuracy_ci95"]) == 2 and len(h["cv_scores"]) == 3
    assert png.stat().st_size > 0 and doc["plot"] == str(png)


def test_compare_command_text(digits_view):
    cache, view = digits_view
    r = CliRunner().invoke(cli, ["compare", "--features", view, "--heads", "ncm,knn", "--no-sweep", "--cv", "2",
                                 "--repeats", "2", "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert "CV_ACCURACY" in r.output and ("distinguishable" in r.output or "better than" in r.output)
    assert "] " in r.output  # a value with its interval


@pytest.mark.parametrize("args, names", [
    (["--heads", "logreg,mlpp"], ["mlpp", "did you mean 'mlp'"]),
    (["--heads", "knn", "--cv", "500"], ["--cv 500 is larger than the smallest class", "lower --cv"]),
    (["--heads", "knn", "--cv", "1"], ["cv=1", "whole number >= 2"]),
])
def test_compare_command_refuses_bad_input_in_one_line(digits_view, args, names):
    cache, view = digits_view
    r = CliRunner().invoke(cli, ["compare", "--features", view, *args, "--cache", str(cache)])
    assert r.exit_code == 1 and r.output.startswith("Error:"), r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    for name in names:
        assert name in r.output, (name, r.output)


def test_compare_command_refuses_unlabelled_and_single_class(tmp_path):
    from conftest import unlabelled_and_single_class

    cache = tmp_path / "c"
    unlabelled_and_single_class(tmp_path)
    for data, msg in (("u", "has no labels"), ("one", "single class")):
        r = CliRunner().invoke(cli, ["compare", "--data", str(tmp_path / data), *EXTRACT, "--cache", str(cache)])
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_repeated_stratified_folds_partition_each_repeat():
    from featcache.train.splits import inner_split, repeated_stratified_folds

    y = np.repeat([0, 1, 2], [10, 6, 5])
    folds = repeated_stratified_folds(y, 5, 2, seed=3)
    assert len(folds) == 10
    for r in range(2):
        held = np.concatenate([b for _, b in folds[5 * r:5 * r + 5]])
        assert sorted(held.tolist()) == list(range(21))  # every row held out once per repeat
    for a, b in folds:
        assert not set(a.tolist()) & set(b.tolist()) and np.all(np.bincount(y[b], minlength=3) >= 1)
    assert [b.tolist() for _, b in folds[:5]] != [b.tolist() for _, b in folds[5:]]  # a new shuffle per repeat
    assert [b.tolist() for _, b in repeated_stratified_folds(y, 5, 2, seed=3)] == [b.tolist() for _, b in folds]
    with pytest.raises(DataError, match="--cv 6 is larger than the smallest class"):
        repeated_stratified_folds(y, 6, 1)
    fit, val = inner_split(y, 0.2, seed=0)
    assert len(val) == 5 and sorted(np.concatenate([fit, val]).tolist()) == list(range(21))
    assert set(y[val].tolist()) == {0, 1, 2}  # stratified
    with pytest.raises(DataError, match="only 1 training row"):
        inner_split(y[:1], 0.2, seed=0)


def test_fit_head_and_results_print_intervals(digits_view):
    cache, view = digits_view
    r = CliRunner().invoke(cli, ["fit-head", "--features", view, "--head", "ncm", "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert "test accuracy 0." in r.output and "] (balanced" in r.output and "n=270" in r.output
    fit = json.loads(CliRunner().invoke(cli, ["fit-head", "--features", view, "--head", "ncm", "--cache", str(cache),
                                              "--json"]).stdout)
    test = fit["metrics"]["test"]
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "top5"):
        assert test[f"{k}_ci95"][0] <= test[k] <= test[f"{k}_ci95"][1]
    rows = json.loads(CliRunner().invoke(cli, ["results", "--cache", str(cache), "--json"]).stdout)
    assert rows[0]["test_acc_ci95"] == pytest.approx(test["accuracy_ci95"])
    table = CliRunner().invoke(cli, ["results", "--cache", str(cache)]).output
    assert f"{test['accuracy']:.3f} [{test['accuracy_ci95'][0]:.2f}, {test['accuracy_ci95'][1]:.2f}]" in table


def test_largest_seed_and_no_sweep():
    from featcache.train.splits import MAX_SEED

    res = compare(_view(n_per_class=(12, 12)), ["ncm", "knn"], cv=2, repeats=2, seed=MAX_SEED, sweep=False, n_jobs=1)
    assert all(h.params == {} and h.cv_params == [{}] * 4 for h in res.heads)
