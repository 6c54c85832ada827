"""Heads: registry, scikit-learn conformance, accuracy, torch training details."""
from __future__ import annotations

import math
import warnings

import h5py
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

import featcache.train.heads.base as heads_base
import featcache.train.heads._torch_train as torch_train
from featcache.errors import HeadError, UnknownNameError
from featcache.train.heads import (
    HEADS,
    HeadInputError,
    default_grid,
    get_head_class,
    head_name,
    is_lazy,
    list_heads,
    make_head,
    register_head,
)

ALL_HEADS = ["knn", "linear", "logreg", "mlp", "ncm", "svm"]
# Few epochs / a small hidden layer keep the torch heads fast on these small data sets.
FAST = {"linear": dict(max_epochs=30), "mlp": dict(hidden_sizes=(64,), max_epochs=30)}
# On ~100 rows the default lr=1e-3 with batch_size=256 takes one step per epoch: too few.
SMALL = {
    "linear": dict(lr=1e-2, batch_size=32),
    "mlp": dict(hidden_sizes=(32,), lr=1e-2, batch_size=32),
}


def fast_head(name: str, **params):
    """A head with few epochs (for the 600-row `blobs`)."""
    return make_head(name, **{**FAST.get(name, {}), **params})


def small_head(name: str, **params):
    """A head trained quickly and well on the ~100-row `small` data."""
    return make_head(name, **{**SMALL.get(name, {}), **params})


@pytest.fixture(scope="module")
def blobs():
    """4 well-separated classes in 64 dims: 600 training rows, 400 (balanced) test rows."""
    X, y = make_blobs(n_samples=1000, n_features=64, centers=4, cluster_std=6.0, random_state=0)
    return train_test_split(X.astype(np.float32), y, test_size=0.4, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def small():
    """A small 3-class problem for API conformance checks."""
    X, y = make_blobs(n_samples=120, n_features=8, centers=3, cluster_std=2.0, random_state=1)
    return X, y


# ----------------------------------------------------------------- registry
def test_registry_lists_every_head():
    assert list_heads() == ALL_HEADS
    assert set(HEADS) == set(ALL_HEADS)
    for name in ALL_HEADS:
        assert head_name(make_head(name)) == name
        assert isinstance(make_head(name), get_head_class(name))


def test_unknown_head_name_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="unknown head 'mpl'; did you mean 'mlp'"):
        get_head_class("mpl")
    with pytest.raises(UnknownNameError, match="logreg"):
        make_head("logrg")


def test_register_duplicate_name_raises():
    with pytest.raises(HeadError, match="'knn' is already registered"):
        register_head("knn")(type("OtherKNN", (), {}))
    assert HEADS["knn"].__name__ == "KNNHead"


def test_make_head_rejects_unknown_parameter():
    with pytest.raises(HeadError, match=r"no parameter\(s\) 'hiden_sizes'.*hidden_sizes"):
        make_head("mlp", hiden_sizes=(3,))


@pytest.mark.parametrize("name", ALL_HEADS)
def test_default_grid(name):
    grid = default_grid(name)
    params = make_head(name).get_params()
    assert grid and set(grid) <= set(params)
    for key, values in grid.items():
        assert isinstance(values, list) and 2 <= len(values) <= 5, (key, values)
        make_head(name, **{key: values[0]})  # every value is a valid parameter value
    assert any(3 <= len(v) for v in grid.values())
    grid[next(iter(grid))].append("mutated")  # callers get a copy
    assert "mutated" not in default_grid(name)[next(iter(grid))]


# ----------------------------------------------------------------- scikit-learn checks
def _check_instances():
    # The scikit-learn checks fit a few dozen to 300 rows of 2-10 features; the torch heads'
    # defaults (lr=1e-3, batch_size=256) are meant for thousands of rows and take too few
    # optimiser steps there, so the checks run them with a larger lr and smaller batches.
    torch_fast = dict(lr=1e-2, batch_size=32, max_epochs=20)
    out = []
    for name in ALL_HEADS:
        params = torch_fast if name in ("linear", "mlp") else {}
        if name == "mlp":
            params = {**params, "hidden_sizes": (32,)}
        out.append(make_head(name, **params))
    return out


@parametrize_with_checks(_check_instances())
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ----------------------------------------------------------------- conformance
@pytest.mark.parametrize("name", ALL_HEADS)
def test_params_clone_and_learned_attributes(name, small):
    X, y = small
    head = small_head(name)
    params = head.get_params()
    assert clone(head).get_params() == params
    assert head.set_params(**params).get_params() == params
    key, values = next(iter(default_grid(name).items()))
    head.set_params(**{key: values[-1]})
    assert head.get_params()[key] == values[-1]
    head = small_head(name)
    before = set(vars(head))
    assert head.fit(X, y) is head
    learned = set(vars(head)) - before
    assert learned and all(a.endswith("_") for a in learned), learned
    assert head.n_features_in_ == X.shape[1]
    assert list(head.classes_) == [0, 1, 2]
    # a clone is unfitted and keeps the parameters
    twin = clone(head)
    assert twin.get_params() == head.get_params()
    assert not any(a.endswith("_") for a in vars(twin))


@pytest.mark.parametrize("name", ALL_HEADS)
def test_predict_proba_columns_follow_classes(name, small):
    X, y = small
    names = np.array(["zebra", "ant", "moth"])
    y_str = names[y]
    head = small_head(name).fit(X, y_str)
    assert list(head.classes_) == ["ant", "moth", "zebra"]
    proba = head.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    assert (proba >= 0).all()
    pred = head.predict(X)
    assert set(pred) <= set(names)
    np.testing.assert_array_equal(head.classes_[proba.argmax(axis=1)], pred)
    assert head.score(X, y_str) > 0.9


@pytest.mark.parametrize("name", ALL_HEADS)
def test_grid_search_and_cross_val(name, small):
    X, y = small
    key, values = next(iter(default_grid(name).items()))
    search = GridSearchCV(small_head(name), {key: values[:2]}, cv=2).fit(X, y)
    assert search.best_params_[key] in values[:2]
    assert search.best_estimator_.score(X, y) > 0.9
    scores = cross_val_score(small_head(name), X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.9


# ----------------------------------------------------------------- accuracy
@pytest.mark.parametrize("name", ALL_HEADS)
def test_accuracy_on_separable_features(name, blobs):
    X_train, X_test, y_train, y_test = blobs
    assert fast_head(name).fit(X_train, y_train).score(X_test, y_test) >= 0.95


@pytest.mark.parametrize("name", ALL_HEADS)
def test_chance_level_on_shuffled_labels(name, blobs):
    X_train, X_test, y_train, y_test = blobs
    rng = np.random.default_rng(1)
    # train and test labels permuted independently: no head can beat chance except by noise
    y_train, y_test = rng.permutation(y_train), rng.permutation(y_test)
    chance = 1 / 4  # the test set is stratified (balanced)
    limit = chance + 3 * math.sqrt(chance * (1 - chance) / len(y_test))  # +3 binomial SE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        score = fast_head(name).fit(X_train, y_train).score(X_test, y_test)
    assert score <= limit, (score, limit)


# ----------------------------------------------------------------- input errors
@pytest.mark.parametrize("name", ALL_HEADS)
def test_single_class_is_refused(name, small):
    X, _ = small
    with pytest.raises(HeadError, match=r"single class \('only'.*at least 2 classes"):
        make_head(name).fit(X, np.array(["only"] * len(X)))


@pytest.mark.parametrize("name", ALL_HEADS)
def test_nan_features_are_refused(name, small):
    X, y = small
    bad = X.copy()
    bad[5, 2] = np.nan
    with pytest.raises(HeadInputError, match=r"NaN values in 1 row\(s\) \(first: row 5\)"):
        small_head(name).fit(bad, y)
    head = small_head(name).fit(X, y)
    bad[7, 0] = np.inf
    with pytest.raises(HeadError, match=r"NaN and inf values in 2 row\(s\)"):
        head.predict(bad)


def test_bad_hyperparameters_are_reported(small):
    X, y = small
    with pytest.raises(HeadError, match=r"lr=-1 .*expected a positive number"):
        make_head("linear", lr=-1).fit(X, y)
    with pytest.raises(HeadError, match=r"hidden_sizes=\(0,\).*tuple of positive ints"):
        make_head("mlp", hidden_sizes=(0,)).fit(X, y)
    with pytest.raises(HeadError, match=r"dropout=1\.5"):
        make_head("mlp", dropout=1.5).fit(X, y)
    with pytest.raises(HeadError, match=r"weights='nearest'"):
        make_head("knn", weights="nearest").fit(X, y)
    with pytest.raises(HeadError, match=r"device='tpu9'"):
        make_head("linear", device="tpu9").fit(X, y)
    with pytest.raises(HeadError, match=r"precision='fp8' .*'auto' or 'float32' or 'bfloat16'"):
        make_head("mlp", precision="fp8").fit(X, y)
    with pytest.raises(HeadError, match=r"batch_size='big' .*a positive int or 'auto'"):
        make_head("linear", batch_size="big").fit(X, y)
    with pytest.raises(HeadError, match=r"lr_schedule='linear' .*'cosine' or 'constant'"):
        make_head("mlp", lr_schedule="linear").fit(X, y)
    for epochs in ("many", 0, 2.5):
        with pytest.raises(HeadError, match=rf"max_epochs={epochs!r} .*a positive int or 'auto'"):
            make_head("linear", max_epochs=epochs).fit(X, y)


BAD_VALUE = {"linear": {"lr": -1}, "mlp": {"dropout": 1.5}, "logreg": {"C": 0}, "svm": {"max_iter": 0},
             "knn": {"weights": "nearest"}, "ncm": {"temperature": -0.1}}


@pytest.mark.parametrize("name", ALL_HEADS)
def test_check_params_finds_without_data_what_fit_refuses(name, small):
    from featcache.train.heads import check_head

    assert set(BAD_VALUE) == set(ALL_HEADS)
    make_head(name).check_params()  # the defaults are valid
    (key, value), = BAD_VALUE[name].items()
    with pytest.raises(HeadInputError, match=f"{key}={value!r} is not valid") as early:
        make_head(name, **BAD_VALUE[name]).check_params()
    with pytest.raises(HeadInputError) as late:
        make_head(name, **BAD_VALUE[name]).fit(*small)
    assert str(late.value) == str(early.value)
    with pytest.raises(HeadInputError, match=f"{key}={value!r}"):  # a bad value anywhere in a grid
        check_head(name, grid={key: [make_head(name).get_params()[key], value]})
    if name != "ncm":  # every head but ncm has a device
        with pytest.raises(HeadInputError, match="device='tpu'"):
            make_head(name, device="tpu").check_params()


def test_wrong_number_of_features(small):
    X, y = small
    head = small_head("ncm").fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but NCMHead is expecting 8"):
        head.predict(X[:, :3])


# ----------------------------------------------------------------- state
@pytest.mark.parametrize("name", ALL_HEADS)
def test_from_state_predicts_identically(name, small):
    X, y = small
    head = small_head(name).fit(X, np.array(["a", "b", "c"])[y])
    state = head.get_state()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    assert state["classes_"].dtype.kind == "U"
    rebuilt = type(head).from_state(head.get_params(), state)
    np.testing.assert_array_equal(rebuilt.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(rebuilt.predict(X), head.predict(X))


def test_from_state_reports_missing_arrays(small):
    X, y = small
    state = small_head("logreg").fit(X, y).get_state()
    del state["coef_"]
    with pytest.raises(HeadError, match="lacks coef_"):
        get_head_class("logreg").from_state({}, state)


# ----------------------------------------------------------------- torch heads
@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_torch_heads_are_reproducible(name, blobs):
    X_train, X_test, y_train, _ = blobs
    a = fast_head(name, random_state=3).fit(X_train, y_train)
    b = fast_head(name, random_state=3).fit(X_train, y_train)
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    c = fast_head(name, random_state=4).fit(X_train, y_train)
    assert not np.array_equal(a.predict_proba(X_test), c.predict_proba(X_test))


def test_torch_training_history(blobs):
    import torch

    X_train, _, y_train, _ = blobs
    threads = torch.get_num_threads()
    head = make_head("linear", max_epochs=40, patience=3).fit(X_train, y_train)
    assert torch.get_num_threads() == threads  # a temporary change at most
    assert 1 <= head.best_epoch_ <= head.n_epochs_ <= 40
    assert len(head.loss_curve_) == len(head.validation_scores_) == head.n_epochs_
    assert head.validation_scores_[head.best_epoch_ - 1] == head.validation_scores_.max()
    assert head.mean_.shape == head.scale_.shape == (64,)
    full = make_head("linear", max_epochs=5, early_stopping=False).fit(X_train, y_train)
    assert full.n_epochs_ == full.best_epoch_ == 5 and full.validation_scores_.size == 0


def test_auto_batch_grows_with_the_data_and_scales_the_learning_rate():
    from featcache.train.heads._torch_train import batch_and_lr

    assert batch_and_lr("auto", 1e-3, 16383) == (256, 1e-3)  # at least 32 steps an epoch
    batch, lr = batch_and_lr("auto", 1e-3, 16384)
    assert batch == 512 and lr == pytest.approx(1e-3 * 2**0.5)
    assert batch_and_lr("auto", 1e-3, 32767)[0] == 512
    batch, lr = batch_and_lr("auto", 1e-3, 32768)
    assert batch == 1024 and lr == pytest.approx(2e-3)  # sqrt(1024 / 256) = 2
    assert batch_and_lr("auto", 1e-3, 10**7)[0] == 1024  # at most 1,024
    assert batch_and_lr(64, 1e-2, 10**6) == (64, 1e-2)  # an explicit batch size is used as given


def test_auto_epochs_plan_enough_steps_by_a_rule_of_the_data_size():
    from featcache.train.heads._torch_train import AUTO_MAX_EPOCHS, planned_epochs

    from featcache.train.heads.torch_heads import LinearHead, MLPHead

    mlp, linear = MLPHead._auto_epochs, LinearHead._auto_epochs
    assert (mlp, linear) == ((7, 240), (16, 480))  # as the docstrings and the README say
    assert planned_epochs(5, 1, mlp) == 5  # an int is used as given
    assert planned_epochs("auto", 45, mlp) == 7  # 51,000 rows at batch 1,024: the epoch floor
    assert planned_epochs("auto", 18, mlp) == 14  # 4,500 rows at batch 256: the step floor
    assert planned_epochs("auto", 18, linear) == 27
    assert planned_epochs("auto", 1, mlp) == AUTO_MAX_EPOCHS  # one step an epoch: capped
    assert planned_epochs("auto", 0, mlp) == AUTO_MAX_EPOCHS


def test_cosine_schedule_falls_from_lr_to_zero_over_the_planned_steps():
    from featcache.train.heads._torch_train import lr_factor

    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert 0 < lr_factor("cosine", 99, 100) < 1e-3
    assert [lr_factor("constant", s, 100) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
@pytest.mark.parametrize("lazy", [False, True])
def test_the_optimiser_follows_the_schedule_step_by_step(monkeypatch, tmp_path, blobs, schedule, lazy):
    from featcache.train.heads._torch_train import AdamW

    X_train, _, y_train, _ = blobs
    seen = []
    step = AdamW.step
    monkeypatch.setattr(AdamW, "step", lambda self, factor=1.0: (seen.append(self.lr * factor), step(self, factor))[1])
    monkeypatch.setattr(heads_base, "BLOCK_BYTES", 100 * 64 * 4)  # lazy: blocks of 100 rows
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=X_train)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        X = f["x"] if lazy else X_train
        head = make_head("linear", batch_size=64, lr=0.01, max_epochs=3, patience=99,
                         lr_schedule=schedule).fit(X, y_train)
    assert head.n_epochs_ == 3
    n_fit = len(y_train) - math.ceil(0.1 * len(y_train))  # the validation rows are held out
    per_epoch = math.ceil(n_fit / 64) if not lazy else len(seen) // 3
    assert len(seen) == 3 * per_epoch and per_epoch >= math.ceil(n_fit / 64)
    if schedule == "constant":
        assert set(seen) == {0.01}
    else:
        n = len(seen)  # a half cosine from lr to 0 over every planned step
        assert seen == pytest.approx([0.005 * (1 + math.cos(math.pi * k / n)) for k in range(n)], rel=1e-12)
        assert seen[0] == 0.01 and seen[-1] < 0.01 * 1e-2


def test_the_default_schedule_is_cosine_over_auto_epochs(blobs):
    X_train, _, y_train, _ = blobs
    head = make_head("mlp", hidden_sizes=(16,), patience=99).fit(X_train, y_train)
    # 540 training rows at batch 256: 3 steps an epoch, so 80 epochs reach the mlp's 240 steps
    assert head.get_params()["lr_schedule"] == "cosine" and head.n_epochs_ == 80
    linear = make_head("linear", patience=99).fit(X_train, y_train)
    assert linear.n_epochs_ == 100  # 480 steps would take 160 epochs: capped


def test_bfloat16_training_only_where_native_and_large_enough(monkeypatch):
    import torch

    import featcache.devices as devices
    from featcache.train.heads._torch_train import BF16_MIN_MACS, training_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: True)
    assert training_dtype("auto", cpu, BF16_MIN_MACS) is torch.bfloat16
    assert training_dtype("auto", cpu, BF16_MIN_MACS - 1) is None
    assert training_dtype("float32", cpu, 10 * BF16_MIN_MACS) is None
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: False)
    assert training_dtype("auto", cpu, 10 * BF16_MIN_MACS) is None
    assert training_dtype("bfloat16", cpu, 1) is torch.bfloat16


def test_bfloat16_training_is_reproducible_and_learns(blobs):
    X_train, X_test, y_train, y_test = blobs
    a = fast_head("mlp", precision="bfloat16", random_state=1).fit(X_train, y_train)
    b = fast_head("mlp", precision="bfloat16", random_state=1).fit(X_train, y_train)
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))
    assert (a.predict(X_test) == y_test).mean() > 0.9
    assert all(w.dtype == np.float32 for w in a.coefs_)  # weights stay float32


@pytest.mark.parametrize("layout", ["reversed", "fortran", "strided", "float64", "read-only"])
def test_torch_heads_take_any_in_memory_layout(layout, blobs):
    """The training rows are gathered by torch where it can share the array, by numpy otherwise:
    the same head either way, and no warning."""
    X_train, X_test, y_train, _ = blobs
    X = {"reversed": X_train[::-1], "fortran": np.asfortranarray(X_train), "strided": X_train[:, ::2],
         "float64": X_train.astype(np.float64), "read-only": X_train.copy()}[layout]
    y = y_train[::-1] if layout == "reversed" else y_train
    if layout == "read-only":
        X.flags.writeable = False
    plain = np.ascontiguousarray(X, dtype=np.float32)
    test = X_test[:, ::2] if layout == "strided" else X_test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head = fast_head("linear", random_state=2).fit(X, y)
    same = fast_head("linear", random_state=2).fit(plain, y)
    np.testing.assert_allclose(head.predict_proba(test), same.predict_proba(test), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cast_rows", [None, 7])  # the default block, or blocks of 7 rows
def test_bfloat16_training_rows_are_the_cast_autocast_makes(blobs, cast_rows, monkeypatch):
    import torch

    from featcache.train.heads import _torch_train
    from featcache.train.heads._torch_train import DataPlan

    if cast_rows:  # standardised and cast block by block: the same numbers as the whole copy cast
        monkeypatch.setattr(_torch_train, "STANDARDIZE_BLOCK_BYTES", cast_rows * 64 * 4)
    X_train, _, y_train, _ = blobs
    gen = torch.Generator().manual_seed(0)
    plans = [DataPlan(X_train, X_train, y_train, np.arange(0, 600, 10), n_features=64, batch_size=32,
                      device=torch.device("cpu"), gen=torch.Generator().manual_seed(0), train_dtype=dtype)
             for dtype in (None, torch.bfloat16)]
    assert plans[0].X_train.dtype == torch.float32 and plans[1].X_train.dtype == torch.bfloat16
    assert torch.equal(plans[0].X_train.to(torch.bfloat16), plans[1].X_train)
    train_rows = np.delete(np.arange(600), np.arange(0, 600, 10))
    train_rows = train_rows[torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(0)).numpy()]
    assert torch.equal(plans[0].X_train, plans[0].standardize(X_train[train_rows]))  # one whole-copy scaling
    # the validation rows too: validation runs under the same autocast as training
    assert plans[1].X_val.dtype == torch.bfloat16 and torch.equal(plans[0].X_val.to(torch.bfloat16), plans[1].X_val)
    rows = torch.cat([y for _, y in plans[0].train_batches(gen, 32)])
    assert sorted(rows.tolist()) == sorted(np.delete(y_train, np.arange(0, 600, 10)).tolist())


def test_tiny_training_set_disables_early_stopping():
    X = np.random.default_rng(0).normal(size=(5, 4))
    with pytest.warns(UserWarning, match="early stopping is disabled"):
        head = make_head("linear", max_epochs=3).fit(X, [0, 0, 1, 1, 2])
    assert head.n_epochs_ == 3


class RowLimitedArray:
    """An h5py dataset that counts reads and refuses to be read whole."""

    def __init__(self, dataset, max_rows: int):
        self.dataset, self.max_rows = dataset, max_rows
        self.reads, self.rows_read, self.largest_read = 0, 0, 0

    @property
    def shape(self):
        return self.dataset.shape

    @property
    def dtype(self):
        return self.dataset.dtype

    @property
    def ndim(self):
        return len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        assert isinstance(key, slice) and key.step in (None, 1), key
        rows = len(range(*key.indices(self.shape[0])))
        assert rows <= self.max_rows, f"read {rows} rows at once"
        self.reads += 1
        self.rows_read += rows
        self.largest_read = max(self.largest_read, rows)
        return self.dataset[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("np.asarray() on the whole dataset")


@pytest.mark.parametrize("cache_validation", [True, False])
def test_torch_head_trains_from_h5py_in_blocks(tmp_path, monkeypatch, blobs, cache_validation):
    X_train, X_test, y_train, y_test = blobs
    monkeypatch.setattr(heads_base, "BLOCK_BYTES", 128 * 64 * 4)  # blocks of 128 rows
    if not cache_validation:
        monkeypatch.setattr(torch_train, "VAL_CACHE_BYTES", 0)  # re-read validation rows
    with h5py.File(tmp_path / "features.h5", "w") as f:
        f.create_dataset("x", data=X_train, chunks=(64, 64))
        f.create_dataset("x_test", data=X_test)
    params = dict(batch_size=64, max_epochs=30)
    from_memory = make_head("linear", **params).fit(X_train, y_train)
    with h5py.File(tmp_path / "features.h5", "r") as f:
        lazy = RowLimitedArray(f["x"], max_rows=128)
        assert is_lazy(lazy) and is_lazy(f["x"])
        head = make_head("linear", **params).fit(lazy, y_train)
        assert lazy.reads > 5 and lazy.largest_read == 128
        lazy_test = RowLimitedArray(f["x_test"], max_rows=128)
        proba = head.predict_proba(lazy_test)
        assert lazy_test.reads == math.ceil(len(X_test) / 128)
    np.testing.assert_allclose(proba, head.predict_proba(X_test), rtol=1e-12, atol=1e-12)
    acc_lazy = head.score(X_test, y_test)
    acc_memory = from_memory.score(X_test, y_test)
    assert acc_lazy >= 0.95 and abs(acc_lazy - acc_memory) <= 0.02
    np.testing.assert_allclose(head.mean_, X_train.mean(axis=0, dtype=np.float64), atol=1e-9)
    np.testing.assert_allclose(head.scale_, X_train.std(axis=0, dtype=np.float64), rtol=1e-9)


def test_lazy_features_with_nan_are_refused(tmp_path, blobs):
    X_train, _, y_train, _ = blobs
    bad = X_train.copy()
    bad[300, 1] = np.nan
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("x", data=bad)
    with h5py.File(tmp_path / "bad.h5", "r") as f:
        with pytest.raises(HeadInputError, match=r"NaN.*row 300"):
            make_head("linear", max_epochs=2).fit(f["x"], y_train)


def test_a_linear_grid_trained_together_equals_separate_fits(blobs):
    from featcache.train.heads.torch_heads import LinearHead

    X_train, X_test, y_train, _ = blobs
    combos = [dict(lr=lr, weight_decay=wd) for lr in (3e-4, 3e-3) for wd in (1e-4, 1e-2)]
    together = LinearHead.fit_together([fast_head("linear", **c) for c in combos], X_train, y_train)
    for c, head in zip(combos, together):
        alone = fast_head("linear", **c).fit(X_train, y_train)
        assert (head.n_epochs_, head.best_epoch_) == (alone.n_epochs_, alone.best_epoch_)
        np.testing.assert_allclose(head.loss_curve_, alone.loss_curve_, rtol=1e-5)
        np.testing.assert_allclose(head.predict_proba(X_test), alone.predict_proba(X_test), atol=1e-6)
        assert head.get_params() == alone.get_params()


def test_a_bfloat16_linear_grid_trained_together_equals_separate_fits(blobs):
    from featcache.train.heads.torch_heads import LinearHead

    X_train, X_test, y_train, _ = blobs  # the validation rows are kept in bfloat16 too
    combos = [dict(lr=lr, precision="bfloat16") for lr in (3e-4, 3e-3)]
    together = LinearHead.fit_together([fast_head("linear", **c) for c in combos], X_train, y_train)
    for c, head in zip(combos, together):
        alone = fast_head("linear", **c).fit(X_train, y_train)
        assert (head.n_epochs_, head.best_epoch_) == (alone.n_epochs_, alone.best_epoch_)
        np.testing.assert_allclose(head.validation_scores_, alone.validation_scores_)
        np.testing.assert_allclose(head.predict_proba(X_test), alone.predict_proba(X_test), atol=1e-4)


@pytest.mark.parametrize("precision, atol", [("float32", 1e-6), ("bfloat16", 2e-2)])
def test_an_mlp_grid_trained_together_equals_separate_fits(blobs, precision, atol):
    """Widths and dropouts side by side in one network: each point keeps its own initial
    weights, dropout masks, early stopping and history, as its own fit."""
    from featcache.train.heads.torch_heads import MLPHead

    X_train, X_test, y_train, _ = blobs
    combos = [dict(hidden_sizes=(h,), dropout=p, precision=precision) for h in (16, 48) for p in (0.0, 0.3)]
    heads = [fast_head("mlp", **c) for c in combos]
    assert MLPHead.can_fit_together(heads)
    together = MLPHead.fit_together(heads, X_train, y_train)
    for c, head in zip(combos, together):
        alone = fast_head("mlp", **c).fit(X_train, y_train)
        assert head.n_epochs_ == alone.n_epochs_
        assert precision != "float32" or head.best_epoch_ == alone.best_epoch_
        # bfloat16: the products round differently (dropout's rescaling sits in the weights)
        np.testing.assert_allclose(head.validation_scores_, alone.validation_scores_, atol=atol * 2)
        for mine, theirs in zip(head.coefs_ + head.intercepts_, alone.coefs_ + alone.intercepts_):
            assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
        np.testing.assert_allclose(head.predict_proba(X_test), alone.predict_proba(X_test), atol=atol)
        assert head.get_params() == alone.get_params()


def test_an_mlp_grid_trained_together_from_disk_equals_separate_fits(blobs, tmp_path, monkeypatch):
    from featcache.train.heads.torch_heads import MLPHead

    X_train, X_test, y_train, _ = blobs
    monkeypatch.setattr(heads_base, "BLOCK_BYTES", 128 * 64 * 4)  # blocks of 128 rows
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=X_train)
    combos = [dict(hidden_sizes=(h,), dropout=0.2, precision="float32", max_epochs=4) for h in (8, 24)]
    with h5py.File(tmp_path / "x.h5", "r") as f:
        together = MLPHead.fit_together([make_head("mlp", **c) for c in combos], f["x"], y_train)
        for c, head in zip(combos, together):
            alone = make_head("mlp", **c).fit(f["x"], y_train)
            np.testing.assert_allclose(head.predict_proba(X_test), alone.predict_proba(X_test), atol=1e-6)


def test_the_same_seed_gives_every_mlp_width_the_same_batches(blobs, monkeypatch):
    X_train, _, y_train, _ = blobs
    seen = {}
    real = torch_train.DataPlan.train_batches

    def record(width):
        def batches(self, gen, batch_size):
            for x, y in real(self, gen, batch_size):
                seen.setdefault(width, []).append(y.clone())
                yield x, y
        return batches

    for width in (8, 64):
        monkeypatch.setattr(torch_train.DataPlan, "train_batches", record(width))
        fast_head("mlp", hidden_sizes=(width,), early_stopping=False).fit(X_train, y_train)
    assert len(seen[8]) == len(seen[64]) > 1
    assert all(bool((a == b).all()) for a, b in zip(seen[8], seen[64]))


def test_mlp_grids_of_deeper_or_mixed_precision_networks_are_fitted_one_by_one(blobs, monkeypatch):
    import featcache.train.heads._torch_mlp_grid as mlp_grid
    from featcache.train.heads.torch_heads import MLPHead

    X_train, X_test, y_train, _ = blobs
    assert not MLPHead.can_fit_together([make_head("mlp", hidden_sizes=(16,)), make_head("mlp", hidden_sizes=(16, 8))])
    # precision "auto" gives bfloat16 to the wide network only: each point trains as its own fit
    monkeypatch.setattr(mlp_grid, "training_dtype",
                        lambda precision, device, macs: "bfloat16" if macs > 100 * 48 * 64 else None)
    fitted = []
    monkeypatch.setattr(MLPHead, "fit", lambda self, X, y: fitted.append(self) or self)
    heads = [fast_head("mlp", hidden_sizes=(h,)) for h in (16, 256)]
    assert MLPHead.fit_together(heads, X_train, y_train) == heads and fitted == heads


def test_a_diverging_point_of_a_grid_trained_together_is_named(blobs):
    from featcache.train.heads.torch_heads import LinearHead

    X_train, _, y_train, _ = blobs
    heads = [make_head("linear", lr=lr, max_epochs=3) for lr in (1e-3, 1e30)]
    with pytest.raises(HeadError, match=r"diverged .*lr=1e\+30"):
        LinearHead.fit_together(heads, X_train * 1e20, y_train)
