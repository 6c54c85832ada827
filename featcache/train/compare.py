"""Several heads on one feature view, compared so that the differences can be trusted.

:func:`compare` (behind ``featcache compare``):

1. The view's rows are split as ``fit-head`` splits them (:func:`~featcache.train.splits.make_splits`:
   the data's own split, else seeded and stratified). The test rows are put aside.
2. Repeated stratified k-fold over the other rows (train + val): for every fold and head,
   the head's hyper-parameters are chosen on an inner validation split of the fold's
   training rows (its default sweep grid, :func:`~featcache.train.heads.default_grid`),
   the head is refitted on all of the fold's training rows with them and scored
   (accuracy) on the fold's held-out rows, which no choice has seen.
3. Every head is then chosen on the train/val split, refitted on all non-test rows and
   scored once on the test rows.
4. Per head: the mean CV accuracy with its 95 % interval (Nadeau and Bengio's corrected
   variance), the test metrics with theirs (Wilson, bootstrap), the fit time; the paired
   difference of each head to the best one over the same folds, with the p-value of the
   corrected resampled t-test (:func:`~featcache.train.stats.corrected_ttest`), and a
   verdict in plain words.

The (head, fold) fits run in this process or, when the first ones show that it pays for
starting them, in joblib worker processes (loky).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from sklearn.base import clone

from featcache.errors import DataError, EvaluationError, FeatcacheError, HeadError
from featcache.extraction.entry import extract
from featcache.extraction.manifest import Manifest
from featcache.specs import BackboneSpec, DataSpec, RunSpec
from featcache.store.views import Features, load_features
from featcache.train.heads import default_grid, make_head
from featcache.train.metrics import compute_metrics
from featcache.train.fitting import check_split_and_run
from featcache.train.plots import plot_comparison
from featcache.train.results import jsonable
from featcache.train.splits import (
    MAX_SEED,
    inner_split,
    make_splits,
    repeated_stratified_folds,
)
from featcache.train.stats import PairedTest, corrected_ttest, cv_interval, with_ci
from featcache.train.sweeps import WORKER_START_S
from featcache.train.sweeps import sweep as sweep_grid

__all__ = ["ALPHA", "DEFAULT_HEADS", "CompareResult", "HeadComparison", "check_compare_arguments", "compare",
           "compare_heads", "verdict"]

#: Heads compared when none are named (cheap, and three different kinds of model).
DEFAULT_HEADS = ("logreg", "mlp", "knn")
#: Two heads whose corrected t-test gives p >= ALPHA are "not distinguishable".
ALPHA = 0.05


@dataclass
class HeadComparison:
    """One head in a :class:`CompareResult`. Accuracies are fractions; intervals ``[lo, hi]``."""

    head: str
    params: dict  # chosen on the train/val split for the final fit
    cv_accuracy: float
    cv_accuracy_ci95: list[float]
    cv_scores: list[float]  # one per fold, in fold order (repeat-major)
    cv_params: list[dict]  # the parameters chosen inside each fold
    test_accuracy: float | None
    test_accuracy_ci95: list[float] | None
    test_metrics: dict
    fit_s: float  # the final choice (sweep on train/val) + refit on all non-test rows
    cv_fit_s: float  # median over the folds of the same inside one fold
    difference_to_best: float | None = None  # mean over the folds of (best - this)
    difference_ci95: list[float] | None = None
    p_value: float | None = None  # corrected resampled t-test against the best head
    verdict: str = ""


@dataclass
class CompareResult:
    """What :func:`compare` did; ``heads`` best first (by mean CV accuracy)."""

    view: str
    feature_key: str
    data: str | None
    heads: list[HeadComparison]
    best: str
    cv: int
    repeats: int
    seed: int
    n_cv_rows: int
    n_test: int
    test_train_ratio: float  # mean n_held_out / n_train of one fold (the t-test's correction)
    workers: int
    total_s: float
    plot: str | None = None

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    def table(self) -> str:
        cols = ["head", "params", "cv_accuracy", "test_accuracy", "fit_s", "vs_best", "p"]
        rows = [{"head": h.head + (" *" if h.head == self.best else ""), "params": _params_text(h.params),
                 "cv_accuracy": with_ci(h.cv_accuracy, h.cv_accuracy_ci95),
                 "test_accuracy": with_ci(h.test_accuracy, h.test_accuracy_ci95), "fit_s": f"{h.fit_s:.2f}",
                 "vs_best": "-" if h.difference_to_best is None else f"{-h.difference_to_best:+.3f}",
                 "p": "-" if h.p_value is None else f"{h.p_value:.3f}"} for h in self.heads]
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
        lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols)]
        lines += ["  ".join(r[c].ljust(widths[c]) for c in cols) for r in rows]
        return "\n".join(line.rstrip() for line in lines)

    def summary(self) -> str:
        lines = [f"compare on {self.feature_key}{f' ({self.data})' if self.data else ''}: {self.cv}-fold x "
                 f"{self.repeats} repeat(s) over {self.n_cv_rows} non-test rows, hyper-parameters chosen inside "
                 f"each training fold; then refitted on them and scored once on {self.n_test} test rows", "",
                 self.table(), "",
                 "CV_ACCURACY: mean over the folds [95 % interval, corrected for overlapping folds]; TEST_ACCURACY "
                 "[Wilson 95 %]; VS_BEST: mean paired difference to the best (*) over the same folds; P: corrected "
                 "resampled t-test (Nadeau and Bengio, 2003)"]
        lines += [f"  {h.verdict}" for h in self.heads if h.verdict]
        if self.plot:
            lines.append(f"plot -> {self.plot}")
        return "\n".join(lines)


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={':'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                     for k, v in params.items()) or "defaults"


def check_compare_arguments(heads: str | Iterable[str], *, cv: int = 5, repeats: int = 2, seed: int = 0,
                            val_fraction: float = 0.15, test_fraction: float = 0.15,
                            n_jobs: int | None = -1, plot: str | os.PathLike | None = None) -> list[str]:
    """The head names as a list; a :class:`~featcache.errors.FeatcacheError` for arguments of
    :func:`compare` that cannot work. Cheap (no data is read): the CLI calls it before extracting."""
    names = [h.strip() for h in heads.split(",")] if isinstance(heads, str) else [str(h).strip() for h in heads]
    if not names or any(not h for h in names):
        raise HeadError(f"heads={heads!r} has an empty name; expected head names separated by single commas, e.g. "
                        "--heads logreg,mlp,knn (see `featcache heads`)")
    twice = sorted({h for h in names if names.count(h) > 1})
    if twice:
        raise HeadError(f"head(s) {', '.join(twice)} named twice in {','.join(names)}; expected each head once; "
                        "remove the repeats")
    for h in names:
        make_head(h)  # unknown names fail here, with close matches
    for name, value, low in (("cv", cv, 2), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise EvaluationError(f"{name}={value!r}; expected a whole number >= {low}, e.g. --cv 5 --repeats 2")
    check_split_and_run(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, n_jobs=n_jobs, plot=plot)
    return names


@dataclass
class _Task:
    """One fit of one head: choose on ``val`` (an inner split of ``fit`` when None), refit on
    ``fit`` (+ ``val``), score on ``held_out``. ``fold`` is -1 for the final (test) fit."""

    head: str
    fold: int
    fit: np.ndarray
    held_out: np.ndarray
    val: np.ndarray | None = None
    seed: int = 0
    grid: dict = field(default_factory=dict)


def _choose_and_fit(head: str, grid: Mapping[str, list], X: np.ndarray, y: np.ndarray, fit: np.ndarray,
                    val: np.ndarray):
    """The head with the grid point best on ``val`` (fitted on ``fit``), refitted on ``fit`` + ``val``."""
    base = make_head(head)
    params: dict = {}
    if grid and len(val):
        chosen = sweep_grid(lambda p: clone(base).set_params(**p), grid, X[fit], y[fit], X[val], y[val], n_jobs=1)
        params = chosen.best_params
    rows = np.concatenate([fit, val])
    return clone(base).set_params(**params).fit(X[rows], y[rows]), params


def _run_task(task: _Task, X: np.ndarray, y: np.ndarray, val_fraction: float, class_names: list[str]) -> dict:
    t0 = time.perf_counter()
    fit, val = task.fit, task.val
    if val is None:  # a CV fold: choose on an inner validation split of the fold's training rows
        inner_fit, inner_val = inner_split(y[fit], val_fraction, task.seed)
        fit, val = fit[inner_fit], fit[inner_val]
    model, params = _choose_and_fit(task.head, task.grid, X, y, fit, val)
    fit_s = time.perf_counter() - t0
    out = {"head": task.head, "fold": task.fold, "params": jsonable(params), "fit_s": fit_s, "accuracy": None}
    if len(task.held_out) == 0:
        return out
    proba = model.predict_proba(X[task.held_out])
    full = np.zeros((proba.shape[0], len(class_names)))
    full[:, np.asarray(model.classes_, dtype=np.int64)] = proba
    pred = np.argmax(full, axis=1)
    out["accuracy"] = float(np.mean(pred == y[task.held_out]))
    if task.fold < 0:
        out["metrics"] = compute_metrics(y[task.held_out], pred, proba=full, class_names=class_names)
    return out


def _parallel_pays(seconds_per_task: float, left: int, workers: int) -> bool:
    if workers <= 1 or left <= 1:
        return False
    return WORKER_START_S + seconds_per_task * math.ceil(left / workers) < seconds_per_task * left


def _run_all(tasks: list[_Task], X: np.ndarray, y: np.ndarray, val_fraction: float, class_names: list[str],
             n_jobs: int | None) -> tuple[list[dict], int]:
    """Every task's result (in task order) and the worker processes used (1: all ran here).

    ``n_jobs`` -1/None: tasks run here, timed, until the rest is expected to finish sooner
    in ``cpu_count`` workers despite their start-up (:data:`WORKER_START_S`); 1: all here;
    N: all in N workers.
    """
    from joblib import Parallel, delayed, effective_n_jobs  # joblib (with sklearn) only when heads are fitted

    auto = n_jobs is None or n_jobs == -1
    workers = min(effective_n_jobs(-1 if auto else n_jobs), len(tasks))
    done: list[dict] = []
    t0 = time.perf_counter()
    while (auto or workers <= 1) and len(done) < len(tasks):
        done.append(_run_task(tasks[len(done)], X, y, val_fraction, class_names))
        left = len(tasks) - len(done)
        if _parallel_pays((time.perf_counter() - t0) / len(done), left, min(workers, left)):
            break
    rest = tasks[len(done):]
    if not rest:
        return done, 1
    workers = min(workers, len(rest))
    done += Parallel(n_jobs=workers, backend="loky")(
        delayed(_run_task)(t, X, y, val_fraction, class_names) for t in rest)
    return done, workers


def _labelled_rows(f: Features) -> np.ndarray:
    labelled = np.flatnonzero(f.labels >= 0)
    if labelled.size == 0:
        raise DataError(f"the view {f.path} has no labels (an unlabelled data set); compare needs a labelled view: "
                        "extract a folder with one sub-folder per class, or a CSV with --label-column")
    classes = np.unique(f.labels[labelled])
    if classes.size < 2:
        raise DataError(f"the view {f.path} has a single class ({f.class_names[int(classes[0])]!r}); comparing "
                        "classifiers needs at least two classes: add images of another class")
    return labelled


def _tasks(heads: Sequence[str], grids: Mapping[str, dict], assigned: np.ndarray, labels: np.ndarray, cv: int,
           repeats: int, seed: int) -> tuple[list[_Task], list[tuple[np.ndarray, np.ndarray]]]:
    pool = np.flatnonzero((assigned == "train") | (assigned == "val"))
    folds = [(pool[a], pool[b]) for a, b in repeated_stratified_folds(labels[pool], cv, repeats, seed)]
    tasks = [_Task(h, j, fit, held, seed=(seed + 1 + j) % (MAX_SEED + 1), grid=grids[h])
             for j, (fit, held) in enumerate(folds) for h in heads]
    tasks += [_Task(h, -1, np.flatnonzero(assigned == "train"), np.flatnonzero(assigned == "test"),
                    val=np.flatnonzero(assigned == "val"), grid=grids[h]) for h in heads]
    return tasks, folds


def _head_rows(heads: Sequence[str], results: list[dict], ratio: float) -> list[HeadComparison]:
    rows = []
    for h in heads:
        folds = sorted((r for r in results if r["head"] == h and r["fold"] >= 0), key=lambda r: r["fold"])
        final = next(r for r in results if r["head"] == h and r["fold"] < 0)
        scores = [r["accuracy"] for r in folds]
        test = final.get("metrics") or {}
        rows.append(HeadComparison(
            head=h, params=final["params"], cv_accuracy=float(np.mean(scores)),
            cv_accuracy_ci95=cv_interval(scores, ratio), cv_scores=scores, cv_params=[r["params"] for r in folds],
            test_accuracy=test.get("accuracy"), test_accuracy_ci95=test.get("accuracy_ci95"), test_metrics=test,
            fit_s=final["fit_s"], cv_fit_s=float(np.median([r["fit_s"] for r in folds]))))
    return sorted(rows, key=lambda r: -r.cv_accuracy)


def verdict(best: str, other: str, test: PairedTest, alpha: float = ALPHA) -> str:
    """The corrected t-test of ``best`` against ``other`` in plain words."""
    if test.p_value >= alpha:
        return (f"{best} and {other} are not distinguishable on this data (mean CV accuracy difference "
                f"{test.mean_difference:+.3f}, p = {test.p_value:.2f})")
    return (f"{best} is better than {other} on this data (+{test.mean_difference:.3f} mean CV accuracy, "
            f"95 % interval [{test.ci95[0]:+.3f}, {test.ci95[1]:+.3f}], p = {test.p_value:.3g})")


def _add_verdicts(rows: list[HeadComparison], ratio: float) -> None:
    best = rows[0]
    best.verdict = f"{best.head} has the best mean CV accuracy ({with_ci(best.cv_accuracy, best.cv_accuracy_ci95)})"
    for r in rows[1:]:
        t = corrected_ttest(best.cv_scores, r.cv_scores, ratio)
        r.difference_to_best, r.difference_ci95, r.p_value = t.mean_difference, t.ci95, t.p_value
        r.verdict = verdict(best.head, r.head, t)


def compare(
    features: str | os.PathLike | Features,
    heads: str | Iterable[str] = DEFAULT_HEADS,
    *,
    cv: int = 5,
    repeats: int = 2,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    grids: Mapping[str, dict] | None = None,
    sweep: bool = True,
    cache_dir: str | os.PathLike | None = None,
    n_jobs: int | None = -1,
    plot: str | os.PathLike | None = None,
) -> CompareResult:
    """Compare ``heads`` on a view (path, KEY, KEY:DATA, or loaded Features); see the module docstring.

    ``grids`` maps a head to the grid its hyper-parameters are chosen from (default: its
    default sweep grid; ``{}`` fits the head's defaults); ``sweep=False`` fits every head's
    defaults. ``val_fraction`` is both the
    validation share of the final train/val split and of the inner split inside each
    fold; ``test_fraction`` and ``seed`` make the split as in ``fit-head``. ``plot`` writes
    accuracy with its error bars against fit time (:func:`featcache.train.plots.plot_comparison`).
    """
    t0 = time.perf_counter()
    names = check_compare_arguments(heads, cv=cv, repeats=repeats, seed=seed, val_fraction=val_fraction,
                                    test_fraction=test_fraction, n_jobs=n_jobs, plot=plot)
    grids = {h: dict((grids or {}).get(h, default_grid(h))) if sweep else {} for h in names}
    f = features if isinstance(features, Features) else load_features(features, cache_dir=cache_dir)
    _labelled_rows(f)
    assigned = make_splits(f.labels, f.split, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    tasks, folds = _tasks(names, grids, assigned, f.labels, int(cv), int(repeats), seed)
    ratio = float(np.mean([len(b) for _, b in folds]) / np.mean([len(a) for a, _ in folds]))
    results, workers = _run_all(tasks, np.asarray(f.features), f.labels, val_fraction, list(f.class_names), n_jobs)
    rows = _head_rows(names, results, ratio)
    _add_verdicts(rows, ratio)
    out = CompareResult(view=str(f.path), feature_key=f.feature_key, data=f.attrs.get("data_name") or None,
                        heads=rows, best=rows[0].head, cv=int(cv), repeats=int(repeats), seed=seed,
                        n_cv_rows=int(sum(len(b) for _, b in folds[:int(cv)])), n_test=int(np.sum(assigned == "test")),
                        test_train_ratio=ratio, workers=workers, total_s=0.0)
    if plot:
        out.plot = str(plot_comparison([asdict(r) for r in rows], plot, title=f"{out.data or out.feature_key}: "
                                       f"{cv}-fold x {repeats} CV and test accuracy (95 % intervals)"))
    out.total_s = time.perf_counter() - t0
    return out


def compare_heads(heads: str | Iterable[str] = DEFAULT_HEADS, *, features: str | os.PathLike | Features | None = None,
                  data: DataSpec | Manifest | str | None = None, backbone: BackboneSpec | None = None,
                  run: RunSpec | None = None, **options) -> CompareResult:
    """:func:`compare` on a cached view (``features``) or on ``data`` extracted on the way (a cache hit
    when done already) with ``backbone`` and ``run``: the one library call behind ``featcache compare``.
    ``options`` are :func:`compare`'s keywords; bad ones fail before anything is extracted."""
    if (features is None) == (data is None):
        raise FeatcacheError("compare needs exactly one of: features (a cached view, --features) or data "
                             "(extracted on the way, a cache hit when already done, --data); give one of them")
    check_keys = ("cv", "repeats", "seed", "val_fraction", "test_fraction", "n_jobs", "plot")
    names = check_compare_arguments(heads, **{k: options[k] for k in check_keys if k in options})
    backbone, run = backbone or BackboneSpec(), run or RunSpec()
    if backbone.augment:
        raise FeatcacheError(f"--augment {backbone.augment}: compare scores heads on the plain features only; "
                             "drop --augment (fit-head --augment trains on augmented copies)")
    if data is not None:
        features = extract(data, backbone, run).view
    return compare(features, names, cache_dir=run.cache_dir, **options)
