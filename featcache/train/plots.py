"""Plots for evaluation results: confusion matrices, scatter summaries, pipeline summaries.

matplotlib is imported lazily inside the functions and used through its
object-oriented API with the Agg canvas (no pyplot, no global backend switch, no
display needed). Files are written atomically: a temporary file in the same folder,
then ``os.replace``. The format follows the file suffix (``.png``, ``.pdf``, ``.svg``, ...).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from featcache.atomic import atomic_path
from featcache.errors import FeatcacheError
from featcache.train.results import finite, get_path

__all__ = ["PlotError", "check_plot_path", "plot_comparison", "plot_confusion_matrix", "plot_pipeline_summary",
           "plot_scatter"]

#: Marker cycle for series that colour alone does not tell apart.
_MARKERS = "osD^vP*Xh<>"


class PlotError(FeatcacheError, ValueError):
    """A plot cannot be drawn from the given data or written to the given path."""


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _format_for(path: Path) -> str:
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = path.suffix.lower().lstrip(".")
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise PlotError(
            f"cannot tell the image format of {str(path)!r} (suffix {path.suffix!r}); expected one "
            f"of: {', '.join('.' + k for k in sorted(supported))}; use e.g. a '.png' file name"
        )
    return fmt


def check_plot_path(path: str | os.PathLike) -> None:
    """A :class:`PlotError` now for a plot path whose suffix names no image format, so that a
    command asked for a plot fails before its work rather than after it."""
    _format_for(Path(path))


def _save_atomic(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    fmt = _format_for(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fig.savefig(fh, format=fmt, bbox_inches="tight")
    except OSError as e:
        raise PlotError(
            f"cannot write plot {str(path)!r}: {e.strerror or e}; expected a writable folder with free "
            "space; choose another output path or fix the permissions"
        ) from e
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Draw a confusion matrix (rows = true class, columns = predicted) to ``path``.

    Cells are coloured by the row-normalised fraction (recall per true class) and
    annotated with counts when there are at most 30 classes. Returns the path.
    """
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise PlotError(
            f"confusion matrix has shape {m.shape}; expected a non-empty square (C, C) matrix; "
            "pass metrics['confusion_matrix'] from compute_metrics"
        )
    names = [str(c) for c in class_names]
    if len(names) != m.shape[0]:
        raise PlotError(
            f"{len(names)} class_names for a {m.shape[0]}x{m.shape[0]} confusion matrix; expected "
            "one name per row; pass metrics['class_names']"
        )
    if not np.issubdtype(m.dtype, np.number) or np.any(m < 0):
        raise PlotError(
            "confusion matrix has non-numeric or negative entries; expected counts >= 0"
        )
    n = m.shape[0]
    row_sums = m.sum(axis=1, keepdims=True).astype(float)
    frac = np.divide(m, row_sums, out=np.zeros(m.shape, dtype=float), where=row_sums > 0)

    side = min(4.0 + 0.45 * n, 40.0)
    fig = _new_figure(side + 1.5, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    fontsize = max(4, min(10, int(200 / max(n, 1))))
    ax.set_xticklabels(names, rotation=90 if n > 6 else 45, ha="right" if n <= 6 else "center",
                       fontsize=fontsize)
    ax.set_yticklabels(names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=fontsize,
                        color="white" if frac[i, j] > 0.5 else "black")
    total = int(m.sum())
    acc = float(np.trace(m)) / total if total else float("nan")
    ax.set_title(title if title else f"confusion matrix (n={total}, accuracy={acc:.3f})")
    return _save_atomic(fig, path)


def _lookup(point: Mapping[str, Any], key: str) -> Any:
    """``point[key]``, else ``key`` as a dotted path into nested dicts, else None."""
    return point[key] if key in point else get_path(point, key, None)


def plot_scatter(
    points: list[dict],
    x: str,
    y: str,
    label: str,
    path: str | os.PathLike,
    title: str | None = None,
    logx: bool = False,
) -> Path:
    """Scatter ``y`` against ``x`` for a list of dicts, one colour per value of ``label``.

    ``x``, ``y`` and ``label`` are keys of the point dicts (a dotted path like
    ``"metrics.test.accuracy"`` also works). Points whose ``x`` or ``y`` is missing or
    not a finite number are skipped, and with ``logx`` so are points with ``x <= 0``.
    Typical use: rows of :func:`featcache.train.evaluate.results_table` with
    ``x="fit_s", y="test_acc", label="head", logx=True``. Returns the path.
    """
    if not isinstance(points, (list, tuple)):
        raise PlotError(
            f"points is a {type(points).__name__}; expected a list of dicts, e.g. the rows of "
            "results_table()"
        )
    groups: dict[str, list[tuple[float, float]]] = {}
    skipped = 0
    for p in points:
        if not isinstance(p, Mapping):
            skipped += 1
            continue
        xv, yv = finite(_lookup(p, x)), finite(_lookup(p, y))
        if xv is None or yv is None or (logx and xv <= 0):
            skipped += 1
            continue
        lab = _lookup(p, label)
        groups.setdefault("(none)" if lab is None else str(lab), []).append((xv, yv))
    if not groups:
        raise PlotError(
            f"none of the {len(points)} points has numeric {x!r} and {y!r}"
            + (" with a positive x (logx=True)" if logx else "")
            + "; expected keys present in the point dicts; check the column names "
            "(e.g. x='fit_s', y='test_acc')"
        )
    fig = _new_figure(7.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for k, (lab, pts) in enumerate(sorted(groups.items())):
        arr = np.asarray(pts, dtype=float)
        ax.scatter(arr[:, 0], arr[:, 1], label=lab, marker=_MARKERS[k % len(_MARKERS)],
                   s=40, alpha=0.8)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(True, alpha=0.3)
    if len(groups) <= 20:
        ax.legend(title=label, fontsize=8, loc="best")
    ax.set_title(title if title else f"{y} vs {x}" + (f" ({skipped} points skipped)" if skipped else ""))
    return _save_atomic(fig, path)


def _summary_bars(ax, rows: Sequence[Mapping[str, Any]], backbones: list[str], heads: list, colours: list[str],
                  metric: str) -> None:
    """Left panel of :func:`plot_pipeline_summary`: grouped bars, one group per backbone."""
    width = 0.8 / max(1, len(heads))
    x = np.arange(len(backbones))
    for j, h in enumerate(heads):
        vals = []
        for b in backbones:
            r = next((r for r in rows if r.get("backbone") == b and r.get("head") == h), None)
            v = None if r is None else finite(r.get("score"))
            vals.append(np.nan if v is None else v)
        bars = ax.bar(x - 0.4 + width * (j + 0.5), vals, width, label=h, color=colours[j])
        for rect, v in zip(bars, vals):
            if not math.isnan(v) and len(heads) * len(backbones) <= 24:
                ax.annotate(f"{v:.2f}", (rect.get_x() + rect.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels(backbones, rotation=15 if len(backbones) > 3 else 0)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per backbone x head")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="head", fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(heads), 6))


def _summary_scatter(ax, scored: Sequence[Mapping[str, Any]], backbones: list[str], heads: list,
                     colours: list[str], metric: str) -> None:
    """Right panel of :func:`plot_pipeline_summary`: score against fit time (log)."""
    from matplotlib.lines import Line2D  # matplotlib only when a plot is drawn

    for j, h in enumerate(heads):
        for k, b in enumerate(backbones):
            pts = [(max(finite(r.get("fit_s")) or 0.0, 1e-4), finite(r.get("score")))
                   for r in scored if r.get("head") == h and r.get("backbone") == b]
            if pts:
                ax.scatter(*zip(*pts), color=colours[j], marker=_MARKERS[k % len(_MARKERS)], s=50, alpha=0.85)
    ax.set_xscale("log")
    ax.set_xlabel("fit time (s, log scale; a sweep counts all its fits)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs fit time")
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], linestyle="", marker="o", color=colours[j], label=f"head {h}")
               for j, h in enumerate(heads)]
    handles += [Line2D([], [], linestyle="", marker=_MARKERS[k % len(_MARKERS)], color="0.4", label=f"backbone {b}")
                for k, b in enumerate(backbones)]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12),
              ncol=min(3, len(handles)))


def plot_pipeline_summary(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    backbones: Sequence[str] | None = None,
    metric: str = "test accuracy",
    title: str | None = None,
) -> Path | None:
    """Draw a pipeline's summary: a score per backbone x head, and the score vs fit time.

    ``rows`` are plain dicts, one per head fitted on one backbone, with keys
    ``backbone`` and ``head`` (labels), ``score`` (a number in [0, 1], or ``None``
    when the fit has no score) and ``fit_s`` (seconds; a sweep counts all its fits).
    ``backbones`` fixes the order of the bar groups (default: order of first
    appearance in ``rows``); heads keep their order of first appearance. ``metric``
    labels the y axes (e.g. ``"test accuracy"``).

    Left: grouped bars, one group per backbone and one colour per head, annotated
    with the score when there are at most 24 bars. Right: score against fit time on
    a log scale, colour = head, marker = backbone. Returns the path, or ``None`` when
    no row has a finite score (nothing is written then).
    """
    if backbones is None:
        backbones = list(dict.fromkeys(str(r.get("backbone")) for r in rows))
    backbones = list(backbones)
    scored = [r for r in rows if finite(r.get("score")) is not None]
    if not scored:
        return None
    heads = list(dict.fromkeys(r.get("head") for r in rows))
    colours = [f"C{i % 10}" for i in range(len(heads))]
    fig = _new_figure(13.0, 5.0)
    _summary_bars(fig.add_subplot(1, 2, 1), rows, backbones, heads, colours, metric)
    _summary_scatter(fig.add_subplot(1, 2, 2), scored, backbones, heads, colours, metric)
    if title:
        fig.suptitle(title)
    return _save_atomic(fig, path)


def _error_bar(value: float, ci: Sequence[float] | None) -> list[list[float]]:
    """``[[below], [above]]`` for matplotlib's ``yerr`` from an interval ``[lo, hi]`` (none: no bar)."""
    lo, hi = (None, None) if not ci else (finite(ci[0]), finite(ci[1]))
    lo, hi = value if lo is None else lo, value if hi is None else hi
    return [[max(value - lo, 0.0)], [max(hi - value, 0.0)]]


def plot_comparison(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Accuracy with 95 % error bars against fit time (log), one colour per head.

    ``rows``: dicts with ``head``, ``cv_accuracy`` and ``cv_accuracy_ci95`` (filled circle),
    ``test_accuracy`` and ``test_accuracy_ci95`` (open square, may be None) and ``fit_s``
    (the x position), as :class:`featcache.train.compare.HeadComparison` holds them.
    """
    points = [r for r in rows if finite(r.get("cv_accuracy")) is not None]
    if not points:
        raise PlotError(f"none of the {len(rows)} rows has a numeric 'cv_accuracy'; expected the heads of a "
                        "compare result (HeadComparison dicts)")
    fig = _new_figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for k, r in enumerate(points):
        x, colour = max(finite(r.get("fit_s")) or 0.0, 1e-3), f"C{k % 10}"
        cv = finite(r["cv_accuracy"])
        ax.errorbar([x], [cv], yerr=_error_bar(cv, r.get("cv_accuracy_ci95")), fmt="o", color=colour, capsize=4,
                    label=f"{r.get('head')}: CV {cv:.3f}")
        test = finite(r.get("test_accuracy"))
        if test is not None:
            ax.errorbar([x * 1.08], [test], yerr=_error_bar(test, r.get("test_accuracy_ci95")), fmt="s",
                        mfc="white", color=colour, capsize=3, alpha=0.8, label=f"{r.get('head')}: test {test:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("fit time on the non-test rows, choice of hyper-parameters included (s, log)")
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(2 * len(points), 4))
    ax.set_title(title or "accuracy (CV mean, test) with 95 % intervals vs fit time", fontsize=9)
    return _save_atomic(fig, path)
