"""What stage two offers and what it has done: the heads that can be trained, the results log as a table."""
from __future__ import annotations

import os
from dataclasses import dataclass

from featcache.store.layout import results_log
from featcache.train.results import format_table_row, no_results_message, read_results, results_table  # noqa: F401
# (format_table_row: re-exported for `featcache results`, which imports this module only when it runs)


def describe_heads() -> list[dict]:
    """name, default sweep grid and first docstring line of every registered head."""
    from featcache.train.heads import default_grid, get_head_class, list_heads  # sklearn: `results` stays light

    rows = []
    for name in list_heads():
        doc = (get_head_class(name).__doc__ or "").strip()
        rows.append({"name": name, "grid": default_grid(name), "about": doc.splitlines()[0] if doc else ""})
    return rows


@dataclass
class ResultRows:
    """Rows of the results log, best first; ``empty_message`` says why there are none."""

    rows: list[dict]
    malformed: int
    empty_message: str


def result_rows(cache_dir: str | os.PathLike | None = None, *, feature_key: str | None = None,
                data: str | None = None, sort_by: str = "test.accuracy", limit: int | None = None) -> ResultRows:
    """The store's results log as table rows (filtered by feature key prefix and data, sorted, the best ``limit``)."""
    records = read_results(results_log(cache_dir), feature_key=feature_key, data=data)
    rows = results_table(records, sort_by=sort_by, intervals=True)[:limit]
    return ResultRows(rows, records.malformed, "" if rows else no_results_message(records))
