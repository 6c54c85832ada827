"""Stage two: fit a head on a feature view, evaluate it, save it, log the result.

The split comes from the data's own split folders when present, else a seeded
stratified split; hyperparameters are chosen on the validation split only; the
test split is used once, for the reported metrics. The saved head is fitted on
the training split (it is the model that the reported metrics describe).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
import numpy as np

from featcache.environment import versions
from featcache.errors import HeadError
from featcache.extraction.augment import source_id
from featcache.store.featureset import FeatureStore
from featcache.store.views import Features, load_features
from featcache.train.evaluate import append_result, compute_metrics, make_splits, split_summary, sweep
from featcache.train.heads import check_head, default_grid, make_head
from featcache.train.params import params_and_grid, parse_grid  # noqa: F401  (re-exported: the Python API)
from featcache.train.persist import save_head
from featcache.train.plots import check_plot_path, plot_confusion_matrix
from featcache.train.splits import check_fraction, check_seed
from featcache.train.stats import with_ci
from featcache.train.sweeps import check_n_jobs


@dataclass
class FitResult:
    """What :func:`fit_head` did. ``params`` are the hyperparameters the saved head was fitted
    with (the head's tunable ones, see :func:`effective_params`, defaults included);
    ``params_given`` only those passed explicitly (``params``; swept values are in ``sweep``)."""

    head_path: str
    feature_key: str
    head: str
    params: dict
    metrics: dict
    timings: dict
    split: dict
    view: str
    sweep: list = field(default_factory=list)
    plot: str | None = None
    params_given: dict = field(default_factory=dict)
    data: str | None = None
    sweep_workers: int = 1  # worker processes of the sweep (1: every fit ran in this process)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        test = self.metrics.get("test") or {}
        val = self.metrics.get("val") or {}
        params = ", ".join(f"{k}={':'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                           for k, v in self.params.items()) or "defaults"
        score = (f"test accuracy {with_ci(test['accuracy'], test.get('accuracy_ci95'))} (balanced "
                 f"{test['balanced_accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}; n={test.get('n')})"
                 if test else "no test split")
        val_s = f", val {with_ci(val['accuracy'], val.get('accuracy_ci95'))}" if val else ""
        return (f"{self.head} [{params}] on {self.feature_key}: {score}{val_s}; fit {self.timings['fit_s']:.2f} s, "
                f"predict {self.timings['predict_s']:.3f} s -> {self.head_path}")


class RowSubset:
    """Rows ``index`` (sorted) of a 2-D array or h5py dataset, sliced lazily (for data larger than memory).

    A slice of the rows is read as the span of the file that holds them, and the rows are picked
    out of it (a fresh array each time). An h5py dataset's span is read into one buffer kept
    for the next read (``read_direct``): 17 ms instead of 27 ms for a 75 MB span, the time of
    the fresh allocation's first touch (benchmarks/README.md, "Heads at scale", session 8).
    """

    def __init__(self, data, index: np.ndarray):
        self.data, self.index = data, np.asarray(index)
        self.shape = (len(self.index), data.shape[1])
        self.dtype = data.dtype
        self.ndim = 2
        self._span = None  # the buffer of the last span read (h5py datasets)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item):
        rows = self.index[item]
        if isinstance(rows, np.ndarray) and rows.ndim == 1 and len(rows):
            lo, hi = int(rows.min()), int(rows.max()) + 1
            if hi - lo <= 4 * len(rows):
                with self._lock:
                    return self._read_span(lo, hi)[rows - lo]  # fancy indexing: a copy
            order = np.argsort(rows)
            out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
            out[order] = self.data[rows[order]]
            return out
        return np.asarray(self.data[rows])

    def _read_span(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of the data: into the kept buffer for an h5py dataset, else as sliced."""
        if not hasattr(self.data, "read_direct"):
            return np.asarray(self.data[lo:hi])
        if self._span is None or len(self._span) < hi - lo:
            self._span = np.empty((hi - lo, self.shape[1]), dtype=self.dtype)
        span = self._span[: hi - lo]
        self.data.read_direct(span, np.s_[lo:hi])
        return span


def check_fit_arguments(head: str, *, params: dict | None = None, grid: dict | None = None, seed: int = 0,
                        val_fraction: float = 0.15, test_fraction: float = 0.15, n_jobs: int | None = -1,
                        plot: str | os.PathLike | None = None) -> None:
    """Raise a :class:`~featcache.errors.FeatcacheError` for arguments of :func:`fit_head` that cannot work.

    Cheap (no data is read, no torch imported): the CLI may call it before extracting features
    on the way. Checks the head name, the parameters of ``params`` and every value of ``grid``
    (names and values: :meth:`~featcache.train.heads.base.HeadBase.check_params`), the seed, the
    split fractions, ``n_jobs`` and the ``plot`` path's image format.
    """
    check_head(head, params, grid)
    check_split_and_run(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, n_jobs=n_jobs, plot=plot)


def check_split_and_run(*, seed: int, val_fraction: float, test_fraction: float, n_jobs: int | None,
                        plot: str | os.PathLike | None = None) -> None:
    """The checks of what :func:`fit_head` and :func:`featcache.train.compare.compare` both take:
    the seed, the split fractions, ``n_jobs`` and the ``plot`` path's image format."""
    check_seed(seed)
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    check_n_jobs(n_jobs)
    if plot:
        check_plot_path(plot)


def effective_params(head: str, model, given: dict | None = None, grid: dict | None = None) -> dict:
    """The hyperparameters that describe a fit: the head's tunable ones (its default sweep grid's
    names), plus every parameter given or swept, with the values the fitted ``model`` used."""
    names = list(default_grid(head))
    names += [k for k in {**(given or {}), **(grid or {})} if k not in names]
    used = model.get_params(deep=False)
    return _plain({k: used[k] for k in names if k in used})


def _head_dir(cache_dir, feature_key: str) -> Path:
    return FeatureStore(cache_dir).root / "heads" / feature_key


def fit_head(
    features: str | os.PathLike | Features,
    head: str = "logreg",
    *,
    params: dict | None = None,
    grid: dict | None = None,
    use_default_grid: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    from_disk: bool = False,
    n_jobs: int | None = -1,
    log: bool = True,
    augmented: str | os.PathLike | None = None,
) -> FitResult:
    """Fit ``head`` on a view (path, KEY, KEY:DATA, or loaded Features) and evaluate it.

    ``augmented`` (a view of augmented copies, see featcache.extraction.augment) adds the copies
    of the training rows to the training set; validation and test stay plain.

    ``n_jobs`` is the parallelism of a sweep (see :func:`featcache.train.sweeps.sweep`): ``-1`` or
    ``None`` (default) decide from the time of the first fit whether worker processes pay off;
    another value is used as given. With ``from_disk`` sweeps always fit in this process, one
    point after another, so that the training set is not copied into every worker.

    The results record and the returned :class:`FitResult` hold ``params``: the head's
    effective hyperparameters (defaults included), and ``params_given``: the ones passed.
    """
    check_fit_arguments(head, params=params, grid=grid, seed=seed, val_fraction=val_fraction,
                        test_fraction=test_fraction, n_jobs=n_jobs, plot=plot)
    f = features if isinstance(features, Features) else load_features(features, cache_dir=cache_dir,
                                                                        mmap=from_disk)
    _check_labelled(f)
    assigned = make_splits(f.labels, f.split, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    rows = _SplitRows(f, assigned, from_disk)
    X_train, y_train, n_augmented = rows.training(augmented)
    grid = {**default_grid(head), **(grid or {})} if use_default_grid else dict(grid or {})
    t0 = time.perf_counter()
    model, sweep_rows, sweep_workers = _fit(head, params or {}, grid, X_train, y_train, rows, n_jobs)
    fit_s = time.perf_counter() - t0
    metrics, predict_s = rows.evaluate(model)
    chosen, given = effective_params(head, model, params, grid), _plain(dict(params or {}))
    data_name = f.attrs.get("data_name") or None
    out = Path(output) if output else _new_head_path(_head_dir(cache_dir, f.feature_key), head)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = save_head(model, out, name=head, feature_key=f.feature_key, class_names=f.class_names,
                      metadata={"identity": f.identity, "view": f.path, "data": data_name, "params": chosen,
                                "params_given": given, "weights_path": f.attrs.get("weights_path")})
    split = split_summary(assigned, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    split["n_train_augmented"] = n_augmented
    result = FitResult(head_path=str(saved), feature_key=f.feature_key, head=head, params=chosen,
                       metrics=metrics, timings={"fit_s": fit_s, "predict_s": predict_s}, split=split, view=f.path,
                       sweep=sweep_rows, plot=_plot(plot, metrics, f, head), params_given=given, data=data_name,
                       sweep_workers=sweep_workers)
    if log:
        _log(result, f, grid, cache_dir)
    return result


def _check_labelled(f: Features) -> None:
    labelled = np.nonzero(f.labels >= 0)[0]
    if len(labelled) == 0:
        raise HeadError(f"the view {f.path} has no labels (an unlabelled data set); fit-head needs a labelled "
                        "view: extract a folder with one sub-folder per class, or a CSV with --label-column")
    if len(np.unique(f.labels[labelled])) < 2:
        raise HeadError(f"the view {f.path} has a single class ({f.class_names[int(f.labels[labelled][0])]!r}); "
                        "a classifier needs at least two classes")


class _SplitRows:
    """The rows of each split of a view (read in batches from disk with ``from_disk``)."""

    def __init__(self, f: Features, assigned: np.ndarray, from_disk: bool):
        self.f, self.from_disk = f, from_disk
        self.idx = {s: np.nonzero(assigned == s)[0] for s in ("train", "val", "test")}

    def X(self, which: str):
        idx = self.idx[which]
        return RowSubset(self.f.features, idx) if self.from_disk else self.f.features[idx]

    def y(self, which: str) -> np.ndarray:
        return self.f.labels[self.idx[which]]

    def training(self, augmented) -> tuple:
        """(X, y, number of augmented copies added) of the training split."""
        X, y = self.X("train"), self.y("train")
        if augmented is None:
            return X, y, 0
        if self.from_disk:
            raise HeadError("--from-disk and augmented copies cannot be combined yet; drop one of them")
        X_aug, y_aug = _augmented_train_rows(augmented, self.f, self.idx["train"])
        return np.concatenate([X, X_aug]), np.concatenate([y, y_aug]), len(y_aug)

    def evaluate(self, model) -> tuple[dict, float]:
        """Metrics on the validation and test splits (those that have rows), and the seconds predicting took."""
        metrics, predict_s = {}, 0.0
        for which in ("val", "test"):
            if len(self.idx[which]):
                t1 = time.perf_counter()
                proba = model.predict_proba(self.X(which))
                pred = model.classes_[np.argmax(proba, axis=1)]
                predict_s += time.perf_counter() - t1
                n_classes = len(self.f.class_names)
                metrics[which] = compute_metrics(self.y(which), pred, proba=_full_proba(proba, model, n_classes),
                                                 class_names=self.f.class_names)
        return metrics, predict_s


def _fit(head: str, params: dict, grid: dict, X_train, y_train, rows: _SplitRows, n_jobs):
    """The fitted model, the sweep's rows and its worker count: a sweep on the validation split when
    there is a grid, else one fit."""
    if not grid:
        return make_head(head, **params).fit(X_train, y_train), [], 1
    if not len(rows.idx["val"]):
        raise HeadError("a sweep needs a validation split to choose on; set --val-fraction > 0 or add val/ "
                        "folders to the data")

    def build(p):
        return make_head(head, **{**params, **p})

    result = sweep(build, grid, X_train, y_train, rows.X("val"), rows.y("val"), n_jobs=n_jobs)
    return result.best_estimator, result.to_dict()["rows"], result.workers


def _plot(plot, metrics: dict, f: Features, head: str) -> str | None:
    if not plot or "test" not in metrics:
        return None
    return str(plot_confusion_matrix(metrics["test"]["confusion_matrix"], f.class_names, plot,
                                     title=f"{head} on {f.feature_key} (test)"))


def _log(result: FitResult, f: Features, grid: dict, cache_dir) -> None:
    append_result(FeatureStore(cache_dir).results_log, {
        "feature_key": f.feature_key, "identity": f.identity, "view": f.path, "data": result.data,
        "head": result.head, "params": result.params, "params_given": result.params_given,
        "grid": _plain_grid(grid), "split": result.split, "metrics": result.metrics, "timings": result.timings,
        "head_path": result.head_path, "versions": versions()})


def _new_head_path(folder: Path, head: str) -> Path:
    """``HEAD-TIME-PID.head.npz`` in ``folder``, with ``-2``, ``-3``, ... when that file exists
    (two fits of one head in one process within a second must not overwrite each other)."""
    base = f"{head}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path, n = folder / f"{base}.head.npz", 1
    while path.exists():
        n += 1
        path = folder / f"{base}-{n}.head.npz"
    return path


def _augmented_train_rows(ref, plain: Features, train_rows: np.ndarray):
    """Augmented copies whose source image is a training row of ``plain``."""
    aug = load_features(ref)
    if aug.identity.get("backbone") != plain.identity.get("backbone") or aug.class_names != plain.class_names:
        raise HeadError(f"augmented view {aug.path} does not belong to {plain.path} (other backbone or classes)")
    train_ids = {plain.ids[i] for i in train_rows}
    take = np.array([source_id(i) in train_ids for i in aug.ids], dtype=bool)
    return aug.features[take], aug.labels[take]


def _full_proba(proba: np.ndarray, model, n_classes: int) -> np.ndarray:
    """Columns for every class of the view (a class absent from train gets probability 0)."""
    full = np.zeros((proba.shape[0], n_classes), dtype=np.float64)
    full[:, np.asarray(model.classes_, dtype=np.int64)] = proba
    return full


def _plain_value(v):
    if isinstance(v, (tuple, list)):
        return [_plain_value(x) for x in v]
    return v.item() if hasattr(v, "item") else v


def _plain(d: dict) -> dict:
    """JSON-friendly copy of a parameter dict (tuples -> lists, numpy scalars -> Python)."""
    return {k: _plain_value(v) for k, v in d.items()}


def _plain_grid(grid: dict) -> dict:
    return {k: [_plain_value(x) for x in v] for k, v in (grid or {}).items()}
