"""Hyper-parameter sweeps: fit every combination of a grid, keep the best on val.

:func:`sweep` fits every combination of a parameter grid (in this process, or in
parallel with joblib/loky when that pays off), scores each on the validation split
only and returns a :class:`SweepResult`. It is never given the test split.

Grids fitted at once: when the estimator's class has ``fit_together(estimators, X, y)``, the
combinations differ only in its ``together_params`` and its ``can_fit_together(estimators)``
(when it has one) agrees (the ``linear`` head: ``lr`` and ``weight_decay``, one pass over the
data per epoch for every combination; ``mlp``: ``hidden_sizes`` of one layer and
``dropout``, one network; ``logreg`` and ``svm``: ``C``, one pass per L-BFGS round for every
solve still running), the whole grid is fitted by one call in this process; each row's
``fit_seconds`` is its share of that call.

Warm-started paths: otherwise, when the estimator names a ``path_param`` that the grid sweeps
(the ``logreg``/``svm`` heads: ``C``; ``knn``: ``n_neighbors``; ``ncm``: ``temperature``,
an attribute of the class), every fit runs in this process along the
path, strongest regularisation first (``C`` ascending; ``n_neighbors`` descending), each
started from the previous fit (``fit(X, y, warm_start=previous)``), as glmnet and
``LogisticRegressionCV`` do. Rows are still reported in grid order and ties still go to the
first combination in grid order.

With ``n_jobs=-1`` (the default) the first combination is fitted in this process
and timed; worker processes are started only when the remaining fits are expected
to take clearly longer than starting them (:data:`WORKER_START_S`). Features read
from disk (lazy arrays) are always fitted in this process.

The loky worker (:func:`_worker_task`) loads the sweep's arrays once per worker
process from a temporary folder and caps torch's thread count to the worker's
share of the cores.
"""
from __future__ import annotations

import itertools
import math
import os
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from featcache.errors import FeatcacheError, HeadError
from featcache.train.results import jsonable as _jsonable
from featcache.train.splits import EvaluationError

__all__ = ["SweepResult", "check_n_jobs", "sweep", "WORKER_START_S"]

#: Estimated seconds to start loky workers and import the heads' libraries (sklearn, torch) in
#: them; measured 1.8 s for two workers on 2 idle cores, 4-7 s on a busy machine. With
#: ``n_jobs=-1`` (auto) a sweep goes parallel only when that saves more than this.
WORKER_START_S = 3.0


@dataclass
class SweepResult:
    """Outcome of :func:`sweep`.

    ``best_estimator`` is the estimator of the best combination *as fitted on the
    training split* (it is not refitted on train+val). ``rows`` lists every combination
    in grid order as ``{"params", "val_score", "fit_seconds", "predict_seconds"}``.
    """

    best_params: dict
    best_score: float
    best_index: int
    best_estimator: Any
    rows: list[dict] = field(default_factory=list)
    #: worker processes used (1: every fit ran in this process)
    workers: int = 1
    #: how many combinations (the first ones, in grid order) were fitted in this process
    in_process: int = 0

    def to_dict(self) -> dict:
        """JSON-serialisable summary (without the estimator)."""
        return {
            "best_params": _jsonable(self.best_params),
            "best_score": self.best_score,
            "best_index": self.best_index,
            "rows": _jsonable(self.rows),
            "workers": self.workers,
            "in_process": self.in_process,
        }


def _grid_combinations(grid: Mapping[str, Any]) -> list[dict]:
    if not isinstance(grid, Mapping):
        raise EvaluationError(
            f"grid is a {type(grid).__name__}; expected a dict mapping parameter names to lists "
            "of values, e.g. {'lr': [1e-3, 1e-2]}"
        )
    keys = list(grid)
    values = []
    for k in keys:
        v = grid[k]
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple, range, np.ndarray)):
            raise EvaluationError(
                f"grid[{k!r}] = {v!r} is not a list; expected a list of values to try; "
                f"wrap a single value in a list: {{{k!r}: [{v!r}]}}"
            )
        v = list(v)
        if not v:
            raise EvaluationError(
                f"grid[{k!r}] is an empty list; expected at least one value to try; "
                "remove the key or give it values"
            )
        values.append(v)
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _check_xy(name_x: str, X: Any, name_y: str, y: Any) -> None:
    nx = getattr(X, "shape", (len(X),))[0]
    ny = len(y)
    if nx != ny:
        raise EvaluationError(
            f"{name_x} has {nx} rows but {name_y} has {ny}; expected one label per row; "
            "select the same rows for features and labels"
        )
    if nx == 0:
        raise EvaluationError(
            f"{name_x} is empty; expected at least one row; check the split is not empty"
        )


def _fit_and_score(make_estimator, params, X_train, y_train, X_val, y_val, after_make=None,
                   warm_start=None) -> dict:
    """Fit one combination and score it on val. Never raises: errors are returned.

    ``warm_start`` (a previous fit of the path) is passed to ``fit`` when given."""
    try:
        est = make_estimator(dict(params))
        if after_make is not None:
            after_make()
        if not (callable(getattr(est, "fit", None)) and callable(getattr(est, "predict", None))):
            raise HeadError(
                f"make_estimator({params!r}) returned a {type(est).__name__}; expected an object "
                "with fit(X, y) and predict(X); return an estimator instance"
            )
        t0 = time.perf_counter()
        if warm_start is None:
            est.fit(X_train, y_train)
        else:
            est.fit(X_train, y_train, warm_start=warm_start)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = np.asarray(est.predict(X_val)).reshape(-1)
        predict_s = time.perf_counter() - t0
        if pred.shape[0] != len(y_val):
            raise HeadError(
                f"predict returned {pred.shape[0]} values for {len(y_val)} validation rows; "
                "expected one prediction per row"
            )
        score = float(np.mean(pred == np.asarray(y_val)))
        return {"ok": True, "estimator": est, "val_score": score,
                "fit_seconds": fit_s, "predict_seconds": predict_s}
    except Exception as e:  # noqa: BLE001 - reported by the parent with the params
        return _failure(e)


def _failure(e: Exception) -> dict:
    """The result of a fit that raised ``e`` (call inside its ``except``: keeps the traceback)."""
    return {"ok": False, "error": f"{type(e).__name__}: {e}", "message": str(e),
            "featcache_error": isinstance(e, FeatcacheError),
            "traceback": traceback.format_exc(), "exception": e}


def check_n_jobs(n_jobs: Any) -> int | None:
    """``n_jobs`` if valid (``None`` or a non-zero int); :class:`EvaluationError` otherwise."""
    if n_jobs is None:
        return None
    if isinstance(n_jobs, (bool, np.bool_)) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise EvaluationError(
            f"n_jobs={n_jobs!r}; expected a non-zero integer (-1 = all cores when it pays off, 1 = no "
            "parallelism, N = N worker processes); pass e.g. n_jobs=-1 (fit-head --jobs -1)"
        )
    return int(n_jobs)


def _parallel_pays_off(seconds_per_fit: float, left: int, workers: int) -> bool:
    """True when ``left`` fits of ``seconds_per_fit`` each finish sooner on ``workers`` new
    worker processes (after :data:`WORKER_START_S` of start-up) than one after another here."""
    if workers <= 1 or left <= 1:
        return False
    sequential = seconds_per_fit * left
    parallel = WORKER_START_S + seconds_per_fit * math.ceil(left / workers)
    return parallel < sequential


# Worker-side cache: the sweep data is written once to disk, each worker loads it once.
_WORKER_DATA: dict[str, Any] = {}


def _worker_task(make_estimator, params, data_dir: str, token: str, n_threads: int) -> dict:
    if _WORKER_DATA.get("token") != token:
        _WORKER_DATA.clear()
        _WORKER_DATA["arrays"] = tuple(
            np.load(os.path.join(data_dir, f"{n}.npy"), allow_pickle=False)
            for n in ("X_train", "y_train", "X_val", "y_val")
        )
        _WORKER_DATA["token"] = token

    def limit_torch_threads() -> None:
        # Called once the estimator exists (it may have imported torch lazily): avoid
        # oversubscription, each of the parallel workers gets its share of the cores.
        torch = sys.modules.get("torch")
        if torch is not None:
            try:
                if torch.get_num_threads() != n_threads:
                    torch.set_num_threads(n_threads)
            except Exception:  # pragma: no cover - best effort
                pass

    res = _fit_and_score(make_estimator, params, *_WORKER_DATA["arrays"], after_make=limit_torch_threads)
    if not res["ok"]:
        res.pop("exception", None)  # may not pickle (custom __init__): send text only
    return res


def _check_inputs(make_estimator, X_train, y_train, X_val, y_val) -> None:
    _check_xy("X_train", X_train, "y_train", y_train)
    _check_xy("X_val", X_val, "y_val", y_val)
    if not callable(make_estimator):
        raise EvaluationError(
            f"make_estimator is a {type(make_estimator).__name__}; expected a callable "
            "params -> estimator, e.g. lambda p: LogisticRegression(**p)"
        )


class _Board:
    """Collects fit results: rows in grid order, the best (ties to the first in grid order)."""

    def __init__(self, combos: list[dict]):
        self.combos = combos
        self.results: dict[int, dict] = {}
        self.best: dict[str, Any] = {"index": -1, "score": -math.inf, "estimator": None}

    def consume(self, i: int, res: dict) -> None:
        params = self.combos[i]
        if not res["ok"]:
            _raise_fit_error(params, res)
        self.results[i] = {
            "params": dict(params),
            "val_score": res["val_score"],
            "fit_seconds": res["fit_seconds"],
            "predict_seconds": res["predict_seconds"],
        }
        better = res["val_score"] > self.best["score"]
        tie_earlier = res["val_score"] == self.best["score"] and i < self.best["index"]
        if better or tie_earlier:  # ties keep the earlier combination in grid order
            self.best.update(index=i, score=res["val_score"], estimator=res["estimator"])

    def result(self, workers: int, in_process: int) -> SweepResult:
        return SweepResult(
            best_params=dict(self.combos[self.best["index"]]),
            best_score=float(self.best["score"]),
            best_index=int(self.best["index"]),
            best_estimator=self.best["estimator"],
            rows=[self.results[i] for i in sorted(self.results)],
            workers=workers,
            in_process=in_process,
        )


def _raise_fit_error(params: dict, res: dict) -> None:
    exc = res.get("exception")
    if isinstance(exc, FeatcacheError):
        raise exc  # already says what is wrong and how to fix it
    if res.get("featcache_error"):  # from a worker: the type did not travel back
        raise HeadError(f"with params {params!r}: {res['message']}")
    msg = (
        f"fitting the head with params {params!r} failed: {res['error']}; "
        "fix or remove that value in the parameter grid"
    )
    if exc is not None:
        raise HeadError(msg) from exc
    raise HeadError(msg + f"\nworker traceback:\n{res['traceback']}")


def path_order(make_estimator, combos: list[dict]) -> list[int] | None:
    """Indices of ``combos`` in warm-start order, or None when the estimator has no path.

    The estimator of the first combination names its ``path_param`` (and ``path_descending``);
    combinations are grouped by their other parameters (grid order) and each group runs along
    the path parameter: ascending (``C``: strongest regularisation first) or descending.
    """
    try:
        probe = make_estimator(dict(combos[0]))
    except Exception:  # noqa: BLE001 - reported by the fit of that combination
        return None
    name = getattr(probe, "path_param", None)
    values = [c.get(name) for c in combos]
    if len(combos) < 2 or name not in combos[0] or not all(_is_number(v) for v in values):
        return None
    sign = -1.0 if getattr(probe, "path_descending", False) else 1.0
    others = [tuple(repr(v) for k, v in c.items() if k != name) for c in combos]
    group = {key: g for g, key in enumerate(dict.fromkeys(others))}
    return sorted(range(len(combos)), key=lambda i: (group[others[i]], sign * float(values[i])))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))


def _run_path(board: _Board, order: list[int], make_estimator, data: tuple) -> None:
    """Fit along ``order`` in this process, each fit warm-started from the previous one."""
    previous = None
    for i in order:
        res = _fit_and_score(make_estimator, board.combos[i], *data, warm_start=previous)
        board.consume(i, res)
        previous = res["estimator"]


def together(make_estimator, combos: list[dict]) -> list | None:
    """The estimators of ``combos`` when their class trains a whole grid at once
    (``fit_together``) and they differ only in its ``together_params``; else None."""
    if len(combos) < 2:
        return None
    try:
        ests = [make_estimator(dict(c)) for c in combos]
    except Exception:  # noqa: BLE001 - reported by the fit of that combination
        return None
    cls = type(ests[0])
    free = set(getattr(cls, "together_params", ()))
    if not callable(getattr(cls, "fit_together", None)) or any(type(e) is not cls for e in ests):
        return None

    def fixed(e) -> dict:
        return {k: repr(v) for k, v in e.get_params().items() if k not in free}

    if not all(fixed(e) == fixed(ests[0]) for e in ests):
        return None
    try:
        fits = getattr(cls, "can_fit_together", lambda ests: True)(ests)
    except Exception:  # noqa: BLE001 - reported by the fit of that combination
        return None
    return ests if fits else None


def _run_together(board: _Board, ests: list, data: tuple) -> None:
    """Fit every combination with one ``fit_together`` call, then score each on val."""
    X_train, y_train, X_val, y_val = data
    t0 = time.perf_counter()
    try:
        type(ests[0]).fit_together(ests, X_train, y_train)
    except Exception as e:  # noqa: BLE001 - reported like the failure of a single fit
        _raise_fit_error({k: [c[k] for c in board.combos] for k in board.combos[0]}, _failure(e))
    share = (time.perf_counter() - t0) / len(ests)
    for i, est in enumerate(ests):
        t1 = time.perf_counter()
        pred = np.asarray(est.predict(X_val)).reshape(-1)
        board.consume(i, {"ok": True, "estimator": est, "val_score": float(np.mean(pred == np.asarray(y_val))),
                          "fit_seconds": share, "predict_seconds": time.perf_counter() - t1})


def _run_as_one(board: _Board, make_estimator, data: tuple) -> bool:
    """A grid fitted at once or a warm-started path, in this process; False when neither applies."""
    grid = together(make_estimator, board.combos)
    if grid is not None:
        _run_together(board, grid, data)
        return True
    order = path_order(make_estimator, board.combos)
    if order is not None:
        _run_path(board, order, make_estimator, data)
        return True
    return False


def _run_in_process(board: _Board, make_estimator, data: tuple, *, auto: bool, workers: int) -> int:
    """Fit combinations here, in grid order, until workers pay off (auto); returns how many."""
    start, combos = 0, board.combos
    while start < len(combos):
        t0 = time.perf_counter()
        board.consume(start, _fit_and_score(make_estimator, combos[start], *data))
        start += 1
        left = len(combos) - start
        if auto and _parallel_pays_off(time.perf_counter() - t0, left, min(workers, left)):
            break
    return start


def _run_in_workers(board: _Board, start: int, workers: int, make_estimator, data: tuple) -> None:
    """Fit ``combos[start:]`` in ``workers`` loky processes (the arrays go through a folder)."""
    from joblib import Parallel, delayed  # only when a sweep goes parallel

    rest = board.combos[start:]
    n_threads = max(1, (os.cpu_count() or 1) // workers)
    with tempfile.TemporaryDirectory(prefix="featcache-sweep-") as data_dir:
        for name, arr in zip(("X_train", "y_train", "X_val", "y_val"), data):
            np.save(os.path.join(data_dir, f"{name}.npy"), np.asarray(arr), allow_pickle=False)
        token = uuid.uuid4().hex
        results = Parallel(n_jobs=workers, backend="loky", return_as="generator")(
            delayed(_worker_task)(make_estimator, params, data_dir, token, n_threads)
            for params in rest
        )
        with warnings.catch_warnings():
            # when a fit fails we stop early; joblib would warn about the cancelled tasks
            warnings.filterwarnings("ignore", message=".*tasks which were still being processed")
            try:
                for i, res in enumerate(results, start=start):
                    board.consume(i, res)
            finally:
                results.close()  # cancels pending tasks on error, inside this filter


def sweep(
    make_estimator: Callable[[dict], Any],
    grid: Mapping[str, list],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    n_jobs: int | None = -1,
) -> SweepResult:
    """Fit every combination of ``grid`` on train, score accuracy on val, keep the best.

    ``make_estimator(params)`` must return a fresh object with ``fit(X, y)`` and
    ``predict(X)``. Combinations are the cartesian product of the grid's lists in key order;
    ties go to the first combination in that order. Only train and val are seen.

    A grid the estimator fits at once (``fit_together``: ``linear`` over ``lr`` and
    ``weight_decay``, ``mlp`` over one-layer ``hidden_sizes`` and ``dropout``, ``logreg``
    and ``svm`` over ``C``) is fitted by one call in this process, and estimators with a
    ``path_param`` swept by the grid (``logreg``, ``svm``, ``knn``, ``ncm``) otherwise along
    a warm-started path in this process (see the module docstring). For the
    others, ``n_jobs=-1`` or ``None`` (auto, the default) fits the first combination in
    this process and times it; the remaining ones go to up to ``cpu_count`` worker
    processes only when that is expected to save time despite the workers' start-up
    (:data:`WORKER_START_S`), otherwise the next one is fitted here and the decision is
    taken again. Any other ``n_jobs`` (``2``, ``-2``, ...) runs every fit
    in that many workers; ``n_jobs=1`` (or a single combination) fits everything in this
    process. Lazy arrays (``h5py`` datasets, memmaps, row subsets of them: features read
    from disk) are always fitted in this process, so that the data is not copied into
    every worker.

    Workers use joblib's ``loky`` backend (``make_estimator`` must be picklable by
    cloudpickle); the arrays are written once and loaded once per worker, each with
    ``cpu_count // workers`` torch threads. The result's ``workers`` and ``in_process``
    say where the fits ran.

    ``best_estimator`` is the one fitted on the training split (not refitted on train+val).
    Raises :class:`EvaluationError` (bad grid, mismatched arrays) or :class:`HeadError`.
    """
    from joblib import effective_n_jobs  # joblib is imported by sweeps only

    from featcache.train.heads.base import is_lazy  # heads.base imports scikit-learn

    combos = _grid_combinations(grid)
    _check_inputs(make_estimator, X_train, y_train, X_val, y_val)
    n_jobs = check_n_jobs(n_jobs)
    auto = n_jobs is None or n_jobs == -1
    data = (X_train, y_train, X_val, y_val)
    board = _Board(combos)
    if _run_as_one(board, make_estimator, data):
        return board.result(workers=1, in_process=len(combos))
    lazy = is_lazy(X_train) or is_lazy(X_val)
    workers = 1 if lazy else min(effective_n_jobs(-1 if auto else n_jobs), len(combos))
    start = 0
    if auto or workers <= 1:
        start = _run_in_process(board, make_estimator, data, auto=auto, workers=workers)
    workers = min(workers, len(combos) - start)
    if workers > 1:
        _run_in_workers(board, start, workers, make_estimator, data)
    return board.result(workers=max(workers, 1) if start < len(combos) else 1, in_process=start)
