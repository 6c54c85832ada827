"""Evaluation: splits, metrics, hyper-parameter sweeps and the results log.

A facade: the code lives in one module per concern, and this module re-exports
their public names so that ``from featcache.train.evaluate import ...`` keeps working.

:mod:`featcache.train.splits`
    :func:`make_splits` assigns every row to ``"train"``, ``"val"`` or ``"test"``
    (``""`` = not used); :func:`split_summary` turns an assignment into the
    ``split`` block of a results record. Also :class:`EvaluationError`.
:mod:`featcache.train.metrics`
    :func:`compute_metrics` returns a JSON-serialisable dict.
:mod:`featcache.train.sweeps`
    :func:`sweep` fits every combination of a parameter grid (in this process, or
    in parallel with joblib/loky when that pays off), scores each on the validation
    split only and returns a :class:`SweepResult`. It is never given the test split.
:mod:`featcache.train.results`
    The results log (JSON lines): :func:`append_result`, :func:`read_results`,
    :func:`results_table`, :func:`no_results_message`; its module docstring
    documents the record schema.

All of it works on numpy arrays only: it never imports a backbone, never reads an image.
"""
from __future__ import annotations

from featcache.train.metrics import compute_metrics
from featcache.train.results import (
    TABLE_COLUMNS,
    ResultList,
    append_result,
    no_results_message,
    read_results,
    record_data,
    results_table,
)
from featcache.train.splits import SPLIT_NAMES, EvaluationError, check_seed, make_splits, split_summary
from featcache.train.sweeps import SweepResult, check_n_jobs, sweep

__all__ = [
    "EvaluationError",
    "SPLIT_NAMES",
    "check_seed",
    "make_splits",
    "split_summary",
    "compute_metrics",
    "SweepResult",
    "check_n_jobs",
    "sweep",
    "ResultList",
    "append_result",
    "read_results",
    "record_data",
    "no_results_message",
    "results_table",
    "TABLE_COLUMNS",
]
