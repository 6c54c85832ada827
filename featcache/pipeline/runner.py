"""Pipelines: one TOML file declares an experiment; ``run_pipeline`` runs it with cache reuse.

A pipeline names a data set, a split, a list of backbones and a list of heads.
Running it extracts every backbone's features with :func:`featcache.extraction.entry.extract`
(every row the store already holds is reused, so a second run extracts nothing, and a run
whose rows are all cached imports no torch),
fits every head on every backbone with :func:`featcache.train.fitting.fit_head`, and
writes a summary next to the results. With ``[extract] augment = N`` each
backbone also extracts (or reuses) N seeded augmented copies of every training
image, and every head trains on the plain training rows plus those copies
(validation and test stay plain)::

    <cache>/pipelines/<name>/summary.json     everything PipelineResult.to_dict() holds
    <cache>/pipelines/<name>/summary.png      test accuracy per backbone x head, and vs fit time
    <cache>/pipelines/<name>/heads/<backbone>/<head>.head.npz   the fitted heads (latest run)

The summary also estimates the extraction time the cache saved (see
:data:`MIN_RATE_ROWS`). The file format (schema, parsing, validation) lives in
:mod:`featcache.pipeline.spec`; :func:`load_pipeline`, :func:`parse_pipeline`,
:class:`PipelineError` and the spec dataclasses are re-exported here.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from featcache.errors import FeatcacheError, Interrupted
from featcache.extraction.entry import extract, resolve_key
from featcache.extraction.report import ExtractResult
from featcache.extraction.manifest import Manifest
from featcache.extraction.sources import manifest_of
from featcache.pipeline.spec import (
    BackboneSpec,
    DataSpec,
    ExtractSpec,
    HeadSpec,
    LabelledBackbone,
    Pipeline,
    PipelineError,
    RunSpec,
    SplitSpec,
    load_pipeline,
    parse_pipeline,
    store_folder,
)
from featcache.atomic import atomic_write_text
from featcache.store.featureset import FeatureStore
from featcache.store.views import load_features
from featcache.train.plots import plot_pipeline_summary
from featcache.train.results import INTERVAL_COLUMNS, interval_of
from featcache.train.session import TrainingViews, fit_on
from featcache.train.stats import with_ci

__all__ = [
    "BackboneRun",
    "BackboneSpec",
    "DataSpec",
    "ExtractSpec",
    "HeadRow",
    "HeadSpec",
    "LabelledBackbone",
    "MIN_RATE_ROWS",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "RunSpec",
    "SplitSpec",
    "load_pipeline",
    "parse_pipeline",
    "resolve_cache_dir",
    "run_pipeline",
]

#: A "seconds per extracted row" measurement is only used for the time-saved estimate
#: when it covers at least this many rows: smaller runs are dominated by start-up
#: costs (DataLoader workers, the first batch) and would overstate the saving.
MIN_RATE_ROWS = 100


def resolve_cache_dir(pipeline: Pipeline, cache_dir: str | os.PathLike | None = None) -> Path:
    """The store: ``cache_dir`` if given, else ``$FEATCACHE_CACHE``, else the pipeline's ``cache``, else ``cache``."""
    return store_folder(pipeline.cache, cache_dir)


# --------------------------------------------------------------------------- results


@dataclass
class BackboneRun:
    """What extracting one backbone cost, and what the cache saved."""

    label: str
    backbone: str
    feature_key: str
    view: str
    rows: int
    dim: int
    extracted: int
    reused: int
    cache_hit: bool
    skipped: int
    timings: dict
    #: seconds per extracted row used for the estimate: {seconds_per_row, rows, measured_at,
    #: device, pipeline}; None when there is no measurement of at least MIN_RATE_ROWS rows.
    rate: dict | None = None
    rate_source: str | None = None  # "this run" | "previous run of pipeline X at T" | None
    time_saved_s: float | None = None  # (reused + augmented reused) x seconds_per_row; None when unknown
    #: the augmented copies ([extract] augment > 0): {feature_key, view, copies, seed, rows,
    #: extracted, reused, cache_hit}; None without augmentation. ``extracted``/``reused``
    #: above count the plain rows only.
    augmented: dict | None = None

    @property
    def extracted_all(self) -> int:
        """Rows extracted, plain and augmented."""
        return self.extracted + (self.augmented["extracted"] if self.augmented else 0)

    @property
    def reused_all(self) -> int:
        """Rows reused from the store, plain and augmented."""
        return self.reused + (self.augmented["reused"] if self.augmented else 0)


@dataclass
class HeadRow:
    """One head fitted on one backbone's features."""

    backbone: str  # the backbone's label
    backbone_name: str
    feature_key: str
    head: str  # the head's label
    head_name: str
    params: dict
    val_acc: float | None
    test_acc: float | None
    balanced_acc: float | None
    macro_f1: float | None
    fit_s: float
    predict_s: float
    head_path: str
    metrics: dict = field(default_factory=dict)
    n_train: int | None = None  # plain training rows
    n_train_augmented: int = 0  # augmented copies of them added to the training set


@dataclass
class PipelineResult:
    name: str
    pipeline: str | None
    cache_dir: str
    data: str
    backbones: list[BackboneRun]
    results: list[HeadRow]
    total_s: float
    started: str
    summary_json: str | None = None
    summary_png: str | None = None
    #: what summary.png shows (:func:`_plot_summary`): a rerun that would draw the same is not redrawn
    summary_png_inputs: dict | None = None
    #: {"copies": N, "seed": S} when the heads trained on N augmented copies per training image
    augment: dict | None = None

    @property
    def extracted(self) -> int:
        """Rows extracted by this run, plain and augmented, over every backbone."""
        return sum(b.extracted_all for b in self.backbones)

    @property
    def reused(self) -> int:
        """Rows reused from the store, plain and augmented, over every backbone."""
        return sum(b.reused_all for b in self.backbones)

    @property
    def time_saved_s(self) -> float | None:
        known = [b.time_saved_s for b in self.backbones if b.time_saved_s is not None]
        return sum(known) if known else None

    @property
    def best(self) -> HeadRow | None:
        """The backbone x head with the best validation accuracy (the first of a tie), or None.

        Chosen on validation, like every sweep's point: picking the largest of many test
        accuracies would overstate the winner's, and the test split is for reporting it.
        """
        scored = [r for r in self.results if r.val_acc is not None]
        return max(scored, key=lambda r: r.val_acc) if scored else None

    def to_dict(self) -> dict:
        unknown = [b.label for b in self.backbones if b.time_saved_s is None]
        best = self.best
        return {
            "name": self.name, "pipeline": self.pipeline, "cache_dir": self.cache_dir, "data": self.data,
            "started": self.started, "total_s": self.total_s, "augment": self.augment,
            "extracted": self.extracted, "reused": self.reused,
            "time_saved_s": self.time_saved_s, "time_saved_unknown_for": unknown,
            "best": ({"backbone": best.backbone, "head": best.head, "chosen_by": "val_acc", "val_acc": best.val_acc,
                      "test_acc": best.test_acc} if best else None),
            "backbones": [asdict(b) for b in self.backbones],
            "results": [asdict(r) for r in self.results],
            "summary_json": self.summary_json, "summary_png": self.summary_png,
            "summary_png_inputs": self.summary_png_inputs,
        }

    def table(self) -> str:
        cols = ["backbone", "head", "params", "val_acc", "test_acc", "balanced_acc", "macro_f1", "fit_s"]
        best = self.best
        rows = []
        augmented = any(r.n_train_augmented for r in self.results)
        for r in self.results:
            d = {c: getattr(r, c) for c in cols}
            if augmented:  # training rows: plain + augmented copies
                d["train"] = f"{r.n_train}+{r.n_train_augmented}"
            d["params"] = ", ".join(f"{k}={_fmt_param(v)}" for k, v in r.params.items()) or "defaults"
            for c in cols[3:]:
                d[c] = "-" if d[c] is None else (f"{d[c]:.2f}" if c == "fit_s" else
                                                 with_ci(d[c], interval_of(r.metrics, INTERVAL_COLUMNS[c])))
            d["head"] = r.head + (" *" if r is best else "")
            rows.append(d)
        if augmented:
            cols.insert(3, "train")
        return _text_table(rows, cols)

    def summary(self) -> str:
        lines = [(f"pipeline {self.name}: {len(self.backbones)} backbone(s), {len(self.results)} head fits on "
                  f"{self.data} in {self.total_s:.1f} s (store {self.cache_dir})")]
        if self.augment:
            lines.append(f"heads trained with {self.augment['copies']} augmented copies per training image "
                         f"(seed {self.augment['seed']}); validation and test on plain features")
        lines.append("")
        for b in self.backbones:
            s = (f"  {b.label} [{b.feature_key}]: {b.rows} rows x {b.dim}, extracted {b.extracted}, "
                 f"reused {b.reused}" + (" (cache hit)" if b.cache_hit else ""))
            if b.extracted:
                s += f", extraction {b.timings.get('extract_s', 0.0):.1f} s"
            if b.time_saved_s is not None and b.reused_all:
                s += (f"; saved ~{b.time_saved_s:.1f} s ({b.rate['seconds_per_row'] * 1000:.1f} ms/row, "
                      f"{b.rate_source})")
            elif b.reused_all:
                s += f"; time saved unknown (no extraction of >= {MIN_RATE_ROWS} rows measured yet)"
            if b.skipped:
                s += f"; {b.skipped} unreadable images skipped"
            lines.append(s)
            a = b.augmented
            if a:
                lines.append(f"    augmented [{a['feature_key']}]: {a['rows']} rows ({a['copies']} copies of each of "
                             f"{a['rows'] // max(1, a['copies'])} images, seed {a['seed']}), extracted "
                             f"{a['extracted']}, reused {a['reused']}"
                             + (" (cache hit)" if a["cache_hit"] else ""))
        total = self.time_saved_s
        lines.append(f"  total: extracted {self.extracted}, reused {self.reused}"
                     + (" (plain and augmented rows)" if self.augment else "")
                     + (f", saved ~{total:.1f} s of extraction" if total else ""))
        lines += ["", self.table()]
        best = self.best
        if best is not None:
            lines.append(f"\nbest on validation (*): {best.head} on {best.backbone}, validation accuracy "
                         f"{with_ci(best.val_acc, interval_of(best.metrics, 'val.accuracy'))}, test accuracy "
                         f"{with_ci(best.test_acc, interval_of(best.metrics, 'test.accuracy'))} (to tell heads "
                         "apart, use `featcache compare`)")
        if self.summary_json:
            lines.append(f"summary -> {self.summary_json}" + (f", {self.summary_png}" if self.summary_png else ""))
        return "\n".join(lines)


def _score(r: HeadRow) -> float | None:
    """What summary.png plots for a row: its test accuracy (its validation accuracy without one)."""
    return r.test_acc if r.test_acc is not None else r.val_acc


def _fmt_param(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ":".join(str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _text_table(rows: list[dict], cols: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- running


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _previous_rate(store_root: Path, feature_key: str, device: str) -> dict | None:
    """The newest rate measured for ``feature_key`` on this device type by any pipeline in the store."""
    best = None
    dev = device.split(":")[0]
    for path in sorted((store_root / "pipelines").glob("*/summary.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            for b in doc.get("backbones", []):
                rate = b.get("rate")
                if (b.get("feature_key") == feature_key and isinstance(rate, dict)
                        and str(rate.get("device", "")).split(":")[0] == dev
                        and isinstance(rate.get("seconds_per_row"), (int, float))
                        and rate.get("rows", 0) >= MIN_RATE_ROWS):
                    if best is None or str(rate.get("measured_at", "")) > str(best.get("measured_at", "")):
                        best = dict(rate)
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # a damaged or foreign summary is not a measurement
    return best


#: summary.png plots fit times on a log axis. A rerun whose rows, scores and labels are those the
#: figure shows, and whose fit times are each within this factor of the drawn ones, keeps it.
FIGURE_TIME_FACTOR = 2.0


def _same_figure(drawn: Any, shown: dict) -> bool:
    """True when ``shown`` (this run's figure inputs) would draw what ``drawn`` (the inputs of the
    figure on disk, from summary.json) shows: the same rows, labels and scores (4 decimals), and
    every fit time within FIGURE_TIME_FACTOR of the drawn one (a rerun's timings jitter)."""
    if not isinstance(drawn, dict) or {k: v for k, v in drawn.items() if k != "points"} != {
            k: v for k, v in shown.items() if k != "points"}:
        return False
    old, new = drawn.get("points"), shown["points"]
    if not isinstance(old, list) or len(old) != len(new):
        return False
    try:
        for o, n in zip(old, new):
            if (o["backbone"], o["head"], o["score"]) != (n["backbone"], n["head"], n["score"]):
                return False
            ratio = max(float(n["fit_s"]), 1e-3) / max(float(o["fit_s"]), 1e-3)
            if not 1 / FIGURE_TIME_FACTOR <= ratio <= FIGURE_TIME_FACTOR:
                return False
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _drawn_figure(summary_json: Path) -> Any:
    """The figure inputs recorded in an earlier summary.json (None when unreadable)."""
    try:
        return json.loads(summary_json.read_text(encoding="utf-8")).get("summary_png_inputs")
    except (OSError, ValueError, AttributeError):
        return None


def _plot_summary(rows: list[HeadRow], backbones: list[str], path: Path, title: str) -> tuple[Path | None, dict]:
    """``summary.png`` via :func:`featcache.train.plots.plot_pipeline_summary` (None when no row
    has a score) and the inputs of the figure on disk. The figure is drawn only when it is
    missing or differs from the drawn one (:func:`_same_figure`); otherwise it stays, with the
    inputs it was drawn from."""
    scored = [r for r in rows if _score(r) is not None]
    metric = "test accuracy" if all(r.test_acc is not None for r in scored) else "test (or val) accuracy"
    points = [{"backbone": r.backbone, "head": r.head, "fit_s": r.fit_s,
               "score": None if _score(r) is None else round(_score(r), 4)} for r in rows]
    shown = {"backbones": list(backbones), "metric": metric, "title": title, "points": points}
    drawn = _drawn_figure(path.with_name("summary.json"))
    if scored and path.is_file() and _same_figure(drawn, shown):
        return path, drawn
    return plot_pipeline_summary(points, path, backbones=backbones, metric=metric, title=title), shown


def run_pipeline(pipeline: Pipeline | str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 progress: bool = False, n_jobs: int = -1) -> PipelineResult:
    """Extract every backbone (reusing cached rows), fit every head on each, write the summary.

    ``cache_dir`` overrides the store (see :func:`resolve_cache_dir`). ``progress``
    prints one status line per step on stderr (and progress bars when stderr is a
    terminal). ``n_jobs`` is the parallelism of sweeps.
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline)
    t_start, started = time.perf_counter(), _now()
    steps = _Steps(pipeline, FeatureStore(resolve_cache_dir(pipeline, cache_dir)), progress, n_jobs)
    steps.check_backbones()
    manifest = steps.load_data()
    runs: list[BackboneRun] = []
    rows: list[HeadRow] = []
    for i, b in enumerate(pipeline.backbones, start=1):
        r = steps.extract(i, b, manifest)
        runs.append(steps.backbone_run(b, r))
        views = replace(TrainingViews.of_extraction(r), features=load_features(r.view))  # read once
        rows += [steps.fit(i, b, h, views) for h in pipeline.heads_for(b)]
    return steps.summarise(runs, rows, manifest, started, t_start)


class _Steps:
    """The steps of one pipeline run, with its store, its RunSpec and its status lines."""

    def __init__(self, pipeline: Pipeline, store: FeatureStore, progress: bool, n_jobs: int):
        self.pipeline, self.store, self.progress, self.n_jobs = pipeline, store, progress, n_jobs
        self.out_dir = store.root / "pipelines" / pipeline.name
        self.run = replace(pipeline.extract.run, cache_dir=store.root, progress=progress and sys.stderr.isatty())

    def say(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr, flush=True)

    def context(self, what: str, e: FeatcacheError) -> PipelineError:
        return PipelineError(f"pipeline {self.pipeline.name!r}, {what}: {e}")

    def check_backbones(self) -> None:
        """Every identity resolves before any work is done."""
        for b in self.pipeline.backbones:
            try:
                resolve_key(b.spec, self.run)  # from the resolution index when it knows the spec
            except FeatcacheError as e:
                raise self.context(f"backbone {b.label!r}", e) from e

    def load_data(self) -> Manifest:
        d = self.pipeline.data
        try:
            manifest = manifest_of(d, self.store.root)
        except FeatcacheError as e:
            raise self.context("[data]", e) from e
        self.say(f"pipeline {self.pipeline.name}: {len(manifest)} images from {d.source}, "
                 f"{len(self.pipeline.backbones)} backbone(s), store {self.store.root}")
        return manifest

    def extract(self, i: int, b: LabelledBackbone, manifest: Manifest) -> ExtractResult:
        n_b, aug = len(self.pipeline.backbones), b.spec.augment
        self.say(f"[{i}/{n_b}] {b.label}: extracting ({b.name}, weights {b.weights}, layer {b.layer}"
                 + (f", {aug} augmented copies per training image" if aug else "") + ")")
        try:
            r = extract(manifest, b.spec, self.run)
        except Interrupted:
            raise
        except FeatcacheError as e:
            raise self.context(f"backbone {b.label!r}", e) from e
        a = r.augmented
        self.say(f"[{i}/{n_b}] {b.label}: {r.rows} rows x {r.dim} [{r.feature_key}], extracted {r.extracted}, "
                 f"reused {r.reused} in {r.timings.get('total_s', 0.0):.1f} s"
                 + (f"; augmented {a['rows']} rows, extracted {a['extracted']}, reused {a['reused']}" if a else ""))
        return r

    def backbone_run(self, b: LabelledBackbone, r: ExtractResult) -> BackboneRun:
        """What extracting ``b`` cost, and the extraction time the cache saved."""
        rate, source = self.rate_of(r)
        aug = None
        if r.augmented:  # the copies' own counts; their rows cost at least a plain row each
            aug = {k: r.augmented[k] for k in ("feature_key", "view", "copies", "rows", "extracted", "reused",
                                                "cache_hit")}
            aug["seed"] = b.spec.augment_seed
        reused_all = r.reused + (aug["reused"] if aug else 0)
        if rate is not None:
            saved = reused_all * rate["seconds_per_row"]
        else:
            saved = 0.0 if reused_all == 0 else None
        return BackboneRun(label=b.label, backbone=b.name, feature_key=r.feature_key, view=r.view, rows=r.rows,
                           dim=r.dim, extracted=r.extracted, reused=r.reused, cache_hit=r.cache_hit,
                           skipped=len(r.skipped), timings=dict(r.timings), rate=rate, rate_source=source,
                           time_saved_s=saved, augmented=aug)

    def rate_of(self, r: ExtractResult) -> tuple[dict | None, str | None]:
        """Seconds per extracted row: measured by this run when large enough, else by an earlier one."""
        extract_s = float(r.timings.get("extract_s") or 0.0)
        if r.extracted >= MIN_RATE_ROWS and extract_s > 0:
            return ({"seconds_per_row": extract_s / r.extracted, "rows": r.extracted, "measured_at": _now(),
                     "device": r.device, "pipeline": self.pipeline.name}, "this run")
        rate = _previous_rate(self.store.root, r.feature_key, r.device)
        return rate, (f"measured by pipeline {rate.get('pipeline')!r} at {rate.get('measured_at')} "
                      f"on {rate['rows']} rows") if rate else None

    def fit(self, i: int, b: LabelledBackbone, h: HeadSpec, views: TrainingViews) -> HeadRow:
        self.say(f"[{i}/{len(self.pipeline.backbones)}] {b.label}: fitting {h.label}"
                 + (" (sweep)" if h.sweep or h.grid else ""))
        split = self.pipeline.split
        try:
            fr = fit_on(views, h.name, params=h.params, grid=h.grid, use_default_grid=h.sweep,
                        val_fraction=split.val_fraction, test_fraction=split.test_fraction, seed=split.seed,
                        cache_dir=self.store.root, output=self.out_dir / "heads" / b.label / f"{h.label}.head.npz",
                        n_jobs=self.n_jobs)
        except FeatcacheError as e:
            raise self.context(f"head {h.label!r} on backbone {b.label!r}", e) from e
        test, val = fr.metrics.get("test") or {}, fr.metrics.get("val") or {}
        return HeadRow(
            backbone=b.label, backbone_name=b.name, feature_key=fr.feature_key, head=h.label,
            head_name=h.name, params=fr.params, val_acc=val.get("accuracy"), test_acc=test.get("accuracy"),
            balanced_acc=test.get("balanced_accuracy"), macro_f1=test.get("macro_f1"),
            fit_s=float(fr.timings["fit_s"]), predict_s=float(fr.timings["predict_s"]),
            head_path=fr.head_path, metrics=fr.metrics, n_train=fr.split.get("n_train"),
            n_train_augmented=int(fr.split.get("n_train_augmented", 0)))

    def summarise(self, runs: list[BackboneRun], rows: list[HeadRow], manifest: Manifest, started: str,
                  t_start: float) -> PipelineResult:
        """The result, with ``summary.png`` and ``summary.json`` written beside the heads."""
        p, x = self.pipeline, self.pipeline.extract
        result = PipelineResult(name=p.name, pipeline=p.path, cache_dir=str(self.store.root), data=p.data.source,
                                backbones=runs, results=rows, total_s=0.0, started=started,
                                augment={"copies": x.augment, "seed": x.augment_seed} if x.augment else None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        png, result.summary_png_inputs = _plot_summary(
            rows, [b.label for b in p.backbones], self.out_dir / "summary.png",
            title=f"pipeline {p.name} ({manifest.name}, {len(manifest)} images)")
        result.summary_png = str(png) if png else None
        result.summary_json = str(self.out_dir / "summary.json")
        result.total_s = time.perf_counter() - t_start
        atomic_write_text(self.out_dir / "summary.json", json.dumps(result.to_dict(), indent=2, default=str))
        return result
