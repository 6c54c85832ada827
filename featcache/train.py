"""Stage two: fit a head on a feature view, evaluate it, save it, log the result.

The split comes from the data's own split folders when present, else a seeded
stratified split; hyperparameters are chosen on the validation split only; the
test split is used once, for the reported metrics. The saved head is fitted on
the training split (it is the model that the reported metrics describe).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featcache.errors import HeadError
from featcache.evaluate import append_result, compute_metrics, make_splits, split_summary, sweep
from featcache.heads import default_grid, make_head
from featcache.persist import save_head
from featcache.store import FeatureStore, versions
from featcache.views import Features, load_features


@dataclass
class FitResult:
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

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        test = self.metrics.get("test") or {}
        val = self.metrics.get("val") or {}
        params = ", ".join(f"{k}={v}" for k, v in self.params.items()) or "defaults"
        score = (f"test accuracy {test['accuracy']:.3f} (balanced {test['balanced_accuracy']:.3f}, "
                 f"macro-F1 {test['macro_f1']:.3f})" if test else "no test split")
        val_s = f", val {val['accuracy']:.3f}" if val else ""
        return (f"{self.head} [{params}] on {self.feature_key}: {score}{val_s}; fit {self.timings['fit_s']:.2f} s, "
                f"predict {self.timings['predict_s']:.3f} s -> {self.head_path}")


class RowSubset:
    """Rows ``index`` (sorted) of a 2-D array or h5py dataset, sliced lazily (for data larger than memory)."""

    def __init__(self, data, index: np.ndarray):
        self.data, self.index = data, np.asarray(index)
        self.shape = (len(self.index), data.shape[1])
        self.dtype = data.dtype
        self.ndim = 2

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item):
        rows = self.index[item]
        if isinstance(rows, np.ndarray) and rows.ndim == 1 and len(rows):
            lo, hi = int(rows.min()), int(rows.max()) + 1
            if hi - lo <= 4 * len(rows):
                return np.asarray(self.data[lo:hi])[rows - lo]
            order = np.argsort(rows)
            out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
            out[order] = self.data[rows[order]]
            return out
        return np.asarray(self.data[rows])


def parse_grid(options: dict[str, str | None]) -> dict[str, list]:
    """``{"C": "0.01,0.1,1"}`` -> ``{"C": [0.01, 0.1, 1.0]}`` (ints, floats, bools, strings, tuples a:b)."""

    def value(text: str):
        text = text.strip()
        if ":" in text:  # hidden sizes 512:256
            return tuple(int(x) for x in text.split(":") if x)
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(text.lower(), text)

    return {k: [value(x) for x in v.split(",") if x.strip()] for k, v in options.items() if v}


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
    n_jobs: int = -1,
    log: bool = True,
    augmented: str | os.PathLike | None = None,
) -> FitResult:
    """Fit ``head`` on a view (path, KEY, KEY:DATA, or loaded Features) and evaluate it.

    ``augmented`` (a view of augmented copies, see featcache.augment) adds the copies
    of the training rows to the training set; validation and test stay plain.
    """
    f = features if isinstance(features, Features) else load_features(features, cache_dir=cache_dir,
                                                                        mmap=from_disk)
    labelled = np.nonzero(f.labels >= 0)[0]
    if len(labelled) == 0:
        raise HeadError(f"the view {f.path} has no labels (an unlabelled data set); fit-head needs a labelled "
                        "view: extract a folder with one sub-folder per class, or a CSV with --label-column")
    if len(np.unique(f.labels[labelled])) < 2:
        raise HeadError(f"the view {f.path} has a single class ({f.class_names[int(f.labels[labelled][0])]!r}); "
                        "a classifier needs at least two classes")
    make_head(head, **(params or {}))  # validates the name and the parameters early
    assigned = make_splits(f.labels, f.split, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    idx = {s: np.nonzero(assigned == s)[0] for s in ("train", "val", "test")}

    def rows(which):
        return RowSubset(f.features, idx[which]) if from_disk else f.features[idx[which]]

    X_train, y_train = rows("train"), f.labels[idx["train"]]
    n_augmented = 0
    if augmented is not None:
        if from_disk:
            raise HeadError("--from-disk and augmented copies cannot be combined yet; drop one of them")
        X_aug, y_aug = _augmented_train_rows(augmented, f, idx["train"])
        X_train, y_train = np.concatenate([X_train, X_aug]), np.concatenate([y_train, y_aug])
        n_augmented = len(y_aug)
    X_val, y_val = rows("val"), f.labels[idx["val"]]
    grid = dict(grid or {})
    if use_default_grid:
        grid = {**default_grid(head), **grid}
    t0 = time.perf_counter()
    sweep_rows: list = []
    if grid and len(idx["val"]):
        def build(p):
            return make_head(head, **{**(params or {}), **p})

        result = sweep(build, grid, X_train, y_train, X_val, y_val, n_jobs=n_jobs)
        model, chosen = result.best_estimator, {**(params or {}), **result.best_params}
        sweep_rows = result.to_dict()["rows"]
    elif grid:
        raise HeadError("a sweep needs a validation split to choose on; set --val-fraction > 0 or add val/ "
                        "folders to the data")
    else:
        model, chosen = make_head(head, **(params or {})).fit(X_train, y_train), dict(params or {})
    fit_s = time.perf_counter() - t0
    metrics, predict_s = {}, 0.0
    for which in ("val", "test"):
        if len(idx[which]):
            t1 = time.perf_counter()
            X = rows(which)
            proba = model.predict_proba(X)
            pred = model.classes_[np.argmax(proba, axis=1)]
            predict_s += time.perf_counter() - t1
            metrics[which] = compute_metrics(f.labels[idx[which]], pred, proba=_full_proba(proba, model,
                                             len(f.class_names)), class_names=f.class_names)
    out = Path(output) if output else _head_dir(cache_dir, f.feature_key) / (
        f"{head}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.head.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = save_head(model, out, name=head, feature_key=f.feature_key, class_names=f.class_names,
                      metadata={"identity": f.identity, "view": f.path, "params": chosen,
                                "weights_path": f.attrs.get("weights_path")})
    split = split_summary(assigned, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    split["n_train_augmented"] = n_augmented
    timings = {"fit_s": fit_s, "predict_s": predict_s}
    plot_path = None
    if plot and "test" in metrics:
        from featcache.plots import plot_confusion_matrix

        plot_path = str(plot_confusion_matrix(metrics["test"]["confusion_matrix"], f.class_names, plot,
                                              title=f"{head} on {f.feature_key} (test)"))
    result = FitResult(head_path=str(saved), feature_key=f.feature_key, head=head, params=_plain(chosen),
                       metrics=metrics, timings=timings, split=split, view=f.path, sweep=sweep_rows, plot=plot_path)
    if log:
        append_result(FeatureStore(cache_dir).results_log, {
            "feature_key": f.feature_key, "identity": f.identity, "view": f.path, "head": head,
            "params": result.params, "split": split, "metrics": metrics, "timings": timings,
            "head_path": str(saved), "versions": versions()})
    return result


def _augmented_train_rows(ref, plain: Features, train_rows: np.ndarray):
    """Augmented copies whose source image is a training row of ``plain``."""
    from featcache.augment import source_id

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


def _plain(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v.item() if hasattr(v, "item") else v) for k, v in d.items()}
