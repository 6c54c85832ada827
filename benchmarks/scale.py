#!/usr/bin/env python3
"""Scale (issues 8 and 16): all 70,000 Fashion-MNIST images through extract, then every head.

1. ``extract("torchvision:FashionMNIST")`` (60,000 train + 10,000 test rows, read from
   the IDX files; nothing is written out as image files) into the ``--cache`` store (a
   cache hit when it already holds the features): images/s, the stage timings, peak memory
   of the process tree, store size on disk per row (row shards and the view file).
2. Every registered head on the official split as ``fit_head`` makes it: the view's own
   ``train``/``test`` columns, validation rows (15 %, seeded, stratified) carved out of the
   60,000 training rows, so heads train on 51,000 rows and are scored once on the official
   10,000 test rows. Per head, side by side in this process: one fit with default
   parameters (fit s, predict s on the test rows, test accuracy, peak memory of the fit),
   the head's whole default sweep (chosen on validation; fitted as ``featcache.train.sweeps``
   fits it: the grid at once where the head can, else along a warm-started path where it has
   one), and the scikit-learn reference solver of the same model on the same split
   (``LogisticRegression`` / ``LinearSVC(dual=True)`` / ``KNeighborsClassifier`` / ...).
   Every time is also given as a ratio to the cold extraction time (``--cold-extraction``:
   a JSON of an earlier run that extracted, when this one was a cache hit).
   ``--from-disk`` fits every head on the view read lazily from the HDF5 file (blocks).
3. The same ``logreg`` head on the raw 784 pixels (scaled to [0, 1]), same split,
   same run: the in-house baseline.
4. Next to each head, the published Fashion-MNIST raw-pixel benchmark for the same
   kind of classifier (see ``PUBLISHED`` below for the source and its caveats).

Peak memory: a background thread samples VmRSS of this process and all its
descendants every 100 ms, per phase; a fit's peak is reported as the growth over the
memory held just before it, next to the size of the training matrix (the goal: the fit
holds at most 2x the training matrix, i.e. grows by at most 1x).

Fast default (2 CPU cores): efficientnet_lite0 with its packaged ImageNet weights at 32 px
(the 28x28 images are upscaled to 32x32), batch 128. ``--limit N`` keeps N rows (6/7
from train, 1/7 from test, the first of each) for a quick run. ``--full`` (GPU
machine): resnet50 at 224 px in bfloat16.
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
import make_tables  # noqa: E402

# Published raw-pixel test accuracies of the same kind of classifier on Fashion-MNIST.
PUBLISHED_SOURCE = (
    "Xiao, Rasul & Vollgraf (2017), 'Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning "
    "Algorithms', arXiv:1708.07747, Table 3: the automatic scikit-learn benchmark linked from the 'Benchmark' "
    "section of the zalandoresearch/fashion-mnist README (raw 784 pixels, trained on all 60,000 training images, "
    "best parameter setting of each classifier). Values as recalled, rounded to 0.01; they were not re-fetched "
    "in this session (no network): check them against the source before quoting them elsewhere."
)
PUBLISHED = {
    "logreg": ("LogisticRegression", 0.84),
    "linear": ("LogisticRegression (a linear softmax layer is the same model class)", 0.84),
    "svm": ("LinearSVC", 0.84),
    "knn": ("KNeighborsClassifier (k=5, distance weights)", 0.86),
    "mlp": ("MLPClassifier (one hidden layer of 100, relu)", 0.87),
    "ncm": ("(nearest class mean is not in the benchmark)", None),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="GPU settings: resnet50, native 224 px, bf16, --sweep")
    p.add_argument("--quick", action="store_true", help="smoke-test settings: --limit 140, heads ncm,knn,logreg")
    p.add_argument("--data", default="torchvision:FashionMNIST")
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--limit", type=int, default=None, help="keep N rows (6/7 train, 1/7 test)")
    p.add_argument("--backbone", default=None, help="default efficientnet_lite0 (resnet50 with --full)")
    p.add_argument("--weights", default=None, help="default DEFAULT for efficientnet_lite0 (packaged ImageNet "
                   "weights), none (seeded random init) for other backbones unless given")
    p.add_argument("--image-size", type=int, default=None, help="default 32 px (--full: native)")
    p.add_argument("--heads", default=None, help="comma list (default: every registered head)")
    p.add_argument("--no-sweep", action="store_true", help="skip each head's default sweep")
    p.add_argument("--repeats", type=int, default=1, help="time each head's default fit and predict N times "
                   "(fresh fits in this process) and report the medians; sweeps and references run once")
    p.add_argument("--no-reference", action="store_true", help="skip the scikit-learn reference solvers")
    p.add_argument("--reference-mlp", action="store_true", help="also fit scikit-learn's MLPClassifier "
                   "(minutes on 2 cores)")
    p.add_argument("--from-disk", action="store_true", help="fit every head on the view read lazily from disk")
    p.add_argument("--cold-extraction", default=None, help="JSON of an earlier run of this script whose "
                   "extraction was cold: its time is the denominator of the ratios when this run is a cache hit")
    p.add_argument("--no-raw", action="store_true", help="skip the raw-pixel logistic regression")
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--n-jobs", type=int, default=-1)
    p.add_argument("--blas-threads", type=int, default=None, help="cap BLAS/OpenMP threads of this process with "
                   "threadpoolctl while heads are fitted (default: no cap, the library's behaviour)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="store folder (default: a fresh temporary one, removed at the "
                   "end); an existing store makes the extraction a cache hit")
    p.add_argument("--out", default=str(_bench.RESULTS_DIR))
    p.add_argument("--name", default="scale")
    a = p.parse_args(argv)
    if a.full:
        a.backbone = a.backbone or "resnet50"
    a.backbone = a.backbone or "efficientnet_lite0"
    a.weights = a.weights or ("DEFAULT" if a.backbone == "efficientnet_lite0" else "none")
    if a.image_size is None and not a.full:
        a.image_size = 32  # efficientnet_lite0 needs at least 32 px (a 5x5 kernel on a 4x4 map below that)
    if a.quick:
        a.limit = a.limit or 140
        a.heads = a.heads or "ncm,knn,logreg"
        a.no_sweep = True
    a.batch_size = a.batch_size or 128
    return a


def limited(manifest, limit: int):
    import numpy as np

    split = np.asarray(manifest.split)
    n_train = round(limit * 6 / 7)
    idx = np.concatenate([np.flatnonzero(split == "train")[:n_train],
                          np.flatnonzero(split == "test")[:limit - n_train]])
    return _bench.subset_manifest(manifest, np.sort(idx))


def raw_pixels(manifest):
    """(N, 784) float32 pixels in [0, 1] of the manifest's rows, from the torchvision arrays."""
    import numpy as np

    reader = manifest.reader
    out = None
    for s, side in enumerate(reader.sides):
        rows = np.flatnonzero(reader.row_side == s)
        if not len(rows):
            continue
        data = reader.dataset(side).data
        data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
        block = data[reader.row_index[rows]].reshape(len(rows), -1).astype(np.float32) / 255.0
        if out is None:
            out = np.empty((len(manifest), block.shape[1]), dtype=np.float32)
        out[rows] = block
    return out


def split_rows(view, seed: int) -> dict:
    """Row indices of train / val / test as ``fit_head`` makes them (the view's own test split)."""
    import numpy as np

    from featcache.train.evaluate import make_splits

    assigned = make_splits(view.labels, view.split, seed=seed)
    return {s: np.flatnonzero(assigned == s) for s in ("train", "val", "test")}


def head_arrays(view, idx: dict, from_disk: bool) -> dict:
    """``X_*``/``y_*`` of each split: in-memory float32 rows, or lazy row subsets of the HDF5 view."""
    from featcache.train.fitting import RowSubset

    out = {}
    for s, rows in idx.items():
        out[f"X_{s}"] = RowSubset(view.features, rows) if from_disk else view.features[rows]
        out[f"y_{s}"] = view.labels[rows]
    return out


def measured(mem, name: str, fn):
    """``(result, seconds, peak growth MB)`` of ``fn()``: tree RSS over the phase minus before it."""
    mem.sample(rescan=True)
    before = mem.last_rss_mb
    with mem.phase(name):
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
    return result, seconds, max(0.0, mem.phases[name]["rss_mb"] - before)


def test_accuracy(model, X, y) -> tuple[float, float]:
    import numpy as np

    t0 = time.perf_counter()
    pred = np.asarray(model.predict(X))
    return float(np.mean(pred == y)), time.perf_counter() - t0


def run_head(h: str, d: dict, mem, a) -> dict:
    """One default fit, the default sweep and the scikit-learn reference of head ``h``."""
    from featcache.train.evaluate import sweep
    from featcache.train.heads import default_grid, make_head

    fits, predicts, grow = [], [], 0.0
    for _ in range(a.repeats):  # the same data and seed: the same model each time, only the timings vary
        model, fit_s, g = measured(mem, f"{h}-fit", lambda: make_head(h).fit(d["X_train"], d["y_train"]))
        acc, predict_s = test_accuracy(model, d["X_test"], d["y_test"])
        fits.append(fit_s)
        predicts.append(predict_s)
        grow = max(grow, g)
    fit_s, predict_s = _bench.median(fits), _bench.median(predicts)
    row = {"head": h, "fit_s": fit_s, "predict_s": predict_s, "test_accuracy": acc, "fit_peak_growth_mb": grow,
           "fit_s_all": fits, "predict_s_all": predicts,
           "n_iter": getattr(model, "n_iter_", None), "n_epochs": getattr(model, "n_epochs_", None)}
    print(f"  {h:7s} fit {fit_s:.2f} s, predict {predict_s:.2f} s (median of {len(fits)}), test acc {acc:.4f}, "
          f"fit peak +{grow:.0f} MB", flush=True)
    if not a.no_sweep:
        grid = default_grid(h)
        res, sweep_s, sgrow = measured(mem, f"{h}-sweep", lambda: sweep(
            lambda p: make_head(h, **p), grid, d["X_train"], d["y_train"], d["X_val"], d["y_val"], n_jobs=a.n_jobs))
        sacc, _ = test_accuracy(res.best_estimator, d["X_test"], d["y_test"])
        row.update(sweep_s=sweep_s, sweep_points=len(res.rows), sweep_best=res.best_params, sweep_test_accuracy=sacc,
                   sweep_peak_growth_mb=sgrow, sweep_workers=res.workers,
                   sweep_sum_of_fits_s=sum(r["fit_seconds"] for r in res.rows))
        print(f"  {h:7s} sweep of {len(res.rows)} in {sweep_s:.2f} s -> {res.best_params}, test acc {sacc:.4f}",
              flush=True)
    if not a.no_reference and not a.from_disk:
        row.update(reference(h, d, mem, a))
    return row


def reference_model(h: str, a):
    """scikit-learn's estimator of the same model as head ``h`` with default parameters, or None."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import LinearSVC

    return {
        "logreg": ("LogisticRegression(C=1, lbfgs), float64, standardised", lambda: LogisticRegression(max_iter=1000)),
        "linear": ("LogisticRegression(C=1, lbfgs) (same model class), float64, standardised",
                   lambda: LogisticRegression(max_iter=1000)),
        "svm": ("LinearSVC(C=0.01, dual=False) (liblinear's primal Newton, same objective), float64, standardised",
                lambda: LinearSVC(C=0.01, dual=False, max_iter=1000, random_state=0)),
        "knn": ("KNeighborsClassifier(10, distance, brute), float64, L2-normalised",
                lambda: KNeighborsClassifier(n_neighbors=10, weights="distance", algorithm="brute")),
        "ncm": ("NearestCentroid, float64, centred + L2-normalised (centroids not re-normalised)",
                lambda: NearestCentroid()),
        "mlp": ("MLPClassifier((512,), early_stopping), float64, standardised",
                lambda: MLPClassifier((512,), early_stopping=True, random_state=0) if a.reference_mlp else None),
    }.get(h, (None, lambda: None))


def reference_features(h: str, X, center):
    """The float64 features scikit-learn's reference of ``h`` is fitted on."""
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    if h in ("knn", "ncm"):
        X = X - center if h == "ncm" else X
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


def reference(h: str, d: dict, mem, a) -> dict:
    """Fit, predict and score scikit-learn's reference of head ``h`` (float64, in memory)."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kind, make = reference_model(h, a)
    est = make()
    if est is None:
        return {}
    if h not in ("knn", "ncm"):
        est = make_pipeline(StandardScaler(), est)
    center = np.asarray(d["X_train"]).mean(axis=0, dtype=np.float64)

    def fit():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            est.fit(reference_features(h, d["X_train"], center), d["y_train"])
        return any(issubclass(w.category, ConvergenceWarning) for w in caught)

    not_converged, fit_s, grow = measured(mem, f"{h}-reference", fit)
    acc, predict_s = test_accuracy(est, reference_features(h, d["X_test"], center), d["y_test"])
    print(f"  {h:7s} scikit-learn reference: fit {fit_s:.2f} s, predict {predict_s:.2f} s, test acc {acc:.4f}"
          f"{' (did not converge)' if not_converged else ''}", flush=True)
    return {"reference": kind, "reference_fit_s": fit_s, "reference_predict_s": predict_s,
            "reference_test_accuracy": acc, "reference_converged": not not_converged,
            "reference_peak_growth_mb": grow}


def cold_extraction_s(a, extraction: dict) -> tuple[float | None, str]:
    """Seconds of a cold extraction of these features and where the number comes from."""
    import json

    if not extraction["cache_hit"]:
        return extraction["wall_s"], "this run"
    if a.cold_extraction:
        earlier = json.loads(Path(a.cold_extraction).read_text())["extraction"]
        if earlier["feature_key"] == extraction["feature_key"] and not earlier["cache_hit"]:
            return earlier["wall_s"], f"{a.cold_extraction} ({earlier['rows']:,} rows, cold)"
    return None, "unknown (cache hit; pass --cold-extraction)"


def add_ratios(rows: list[dict], cold_s: float | None) -> None:
    for row in rows:
        for key in ("fit_s", "sweep_s", "predict_s", "reference_fit_s", "reference_predict_s"):
            if cold_s and row.get(key) is not None:
                row[key.replace("_s", "_per_extraction")] = row[key] / cold_s


def extraction_phase(a, m, cache: str, mem) -> tuple[dict, object]:
    """Extract (or find in the store) the features of manifest ``m``; the record and the result."""
    from featcache.extraction.engine import extract

    with mem.phase("extract"):
        t0 = time.perf_counter()
        r = extract(m, backbone=a.backbone, weights=a.weights, image_size=a.image_size, cache_dir=cache,
                    batch_size=a.batch_size, workers=a.workers, device=a.device, progress=sys.stderr.isatty())
        ext_s = time.perf_counter() - t0
    fdir = Path(cache) / "features" / r.feature_key
    rows_bytes = _bench.folder_bytes(fdir / "rows")
    view_bytes = Path(r.view).stat().st_size
    extraction = {
        "rows": r.rows, "dim": r.dim, "feature_key": r.feature_key, "cache_hit": r.cache_hit,
        "extracted": r.extracted, "wall_s": ext_s, "img_per_s": r.rows / ext_s if ext_s else None,
        "timings": r.timings, "device": r.device,
        "peak_tree_rss_mb": mem.phases["extract"]["rss_mb"],
        "max_processes": mem.phases["extract"]["processes"],
        "store_rows_bytes": rows_bytes, "store_view_bytes": view_bytes,
        "store_rows_bytes_per_row": rows_bytes / r.rows, "store_view_bytes_per_row": view_bytes / r.rows,
        "store_total_bytes_per_row": _bench.folder_bytes(fdir) / r.rows,
        "raw_feature_bytes_per_row": r.dim * 4,
    }
    print(f"  extraction: {r.rows:,} rows x {r.dim} in {ext_s:.1f} s ({extraction['img_per_s']:.0f} img/s"
          f"{', cache hit' if r.cache_hit else ''}), peak tree RSS {extraction['peak_tree_rss_mb']:.0f} MB; store "
          f"{rows_bytes / r.rows:.0f} B/row in row shards + {view_bytes / r.rows:.0f} B/row in the view", flush=True)
    return extraction, r


def heads_phase(a, heads: list[str], r, mem, on_row) -> list[dict]:
    """Every head on the official split (see the module docstring); ``on_row`` after each head."""
    import contextlib

    from threadpoolctl import threadpool_limits

    from featcache.store.views import load_features

    import torch  # noqa: F401  loaded before the first head is timed, as a cold extraction leaves it:
    # on a cache hit it is not, and the first head that uses torch would time the import too
    view = load_features(r.view, mmap=a.from_disk)
    d = head_arrays(view, split_rows(view, a.seed), a.from_disk)
    n_train, dim = d["X_train"].shape
    rows: list[dict] = []
    cap = threadpool_limits(limits=a.blas_threads) if a.blas_threads else contextlib.nullcontext()
    with cap:
        for h in heads:
            row = run_head(h, d, mem, a)
            kind, pub = PUBLISHED.get(h, ("", None))
            row.update(features=f"{a.backbone} {dim}-d", n_train=int(n_train), n_test=int(len(d["y_test"])),
                       train_matrix_mb=n_train * dim * 4 / 2**20, published_kind=kind,
                       published_raw_pixel_accuracy=pub, from_disk=a.from_disk)
            rows.append(row)
            on_row(rows)
    return rows


def raw_phase(a, m, mem) -> dict:
    """The logreg head on the raw 784 pixels, same split: the in-house baseline."""
    import numpy as np

    from featcache.train.evaluate import make_splits
    from featcache.train.heads import make_head

    with mem.phase("raw-logreg"):
        X = raw_pixels(m)
        assigned = make_splits(m.labels, np.asarray(m.split, dtype=object), seed=a.seed)
        idx = {s: np.flatnonzero(assigned == s) for s in ("train", "val", "test")}
        t0 = time.perf_counter()
        head = make_head("logreg").fit(X[idx["train"]], m.labels[idx["train"]])
        fit_s = time.perf_counter() - t0
        acc, predict_s = test_accuracy(head, X[idx["test"]], m.labels[idx["test"]])
    print(f"  raw-pixel logreg test acc {acc:.4f} fit {fit_s:.1f} s", flush=True)
    return {"head": "logreg", "features": "raw pixels 784-d", "params": {}, "test_accuracy": acc, "fit_s": fit_s,
            "predict_s": predict_s, "peak_tree_rss_mb": mem.phases["raw-logreg"]["rss_mb"],
            "published_kind": PUBLISHED["logreg"][0], "published_raw_pixel_accuracy": PUBLISHED["logreg"][1],
            "n_train": int(len(idx["train"])), "n_test": int(len(idx["test"]))}


def main(argv=None) -> dict:
    a = parse(argv)
    import_s = _bench.warm_imports()
    from featcache.extraction.sources import load_manifest
    from featcache.train.heads import list_heads

    heads = a.heads.split(",") if a.heads else list_heads()
    info = _bench.machine_info(a.device)
    own_cache = a.cache is None
    cache = a.cache or tempfile.mkdtemp(prefix="featcache-bench-scale-")
    mem = _bench.TreeMemory(interval=0.1)
    out = Path(a.out)
    state: dict = {"rows": 0, "extraction": None, "heads": [], "raw": None, "cold": (None, "")}

    def snapshot(complete: bool) -> dict:
        """The result so far; written after every phase, so a long run that is stopped keeps what it measured."""
        return {
            "benchmark": "scale", "complete": complete, "command": _bench.command_line(),
            "settings": {"data": a.data, "root": a.root, "limit": a.limit, "rows": state["rows"],
                         "backbone": a.backbone, "weights": a.weights, "image_size": a.image_size or "native",
                         "batch_size": a.batch_size, "workers": a.workers, "device": a.device,
                         "sweep": not a.no_sweep, "reference": not a.no_reference, "from_disk": a.from_disk,
                         "heads": heads, "seed": a.seed, "full": a.full, "quick": a.quick, "import_s": import_s,
                         "blas_threads": a.blas_threads, "n_jobs": a.n_jobs, "repeats": a.repeats},
            "machine": _bench.finish_info(dict(info)),
            "memory_method": ("peak_tree_rss_mb: max over 100 ms samples of the sum of VmRSS over this process and "
                              "all its descendants, per phase; *_peak_growth_mb: that peak minus the tree's RSS "
                              "just before the phase (what the fit added on top of the data already loaded)."),
            "extraction": state["extraction"], "cold_extraction_s": state["cold"][0],
            "cold_extraction_source": state["cold"][1], "heads": state["heads"], "raw_pixels": state["raw"],
            "published_source": PUBLISHED_SOURCE, "process_vmhwm_mb": _bench.vm_hwm_mb("self"),
            "peak_tree_rss_mb": mem.peak["rss_mb"],
        }

    def on_row(rows):
        add_ratios(rows, state["cold"][0])
        state["heads"] = rows
        _bench.atomic_write_json(out / f"{a.name}.json", snapshot(False))

    try:
        with mem:
            m = load_manifest(a.data, cache_dir=cache, root=a.root)
            if a.limit and a.limit < len(m):
                m = limited(m, a.limit)
            state["rows"] = len(m)
            print(f"scale: {a.data} ({len(m):,} rows) -> {a.backbone} (weights {a.weights}) at "
                  f"{a.image_size or 'native'} px, batch {a.batch_size}; heads {heads}", flush=True)
            print(f"machine: {_bench.describe_machine(info)}", flush=True)
            state["extraction"], r = extraction_phase(a, m, cache, mem)
            state["cold"] = cold_extraction_s(a, state["extraction"])
            _bench.atomic_write_json(out / f"{a.name}.json", snapshot(False))
            heads_phase(a, heads, r, mem, on_row)
            state["raw"] = None if a.no_raw else raw_phase(a, m, mem)
        result = snapshot(True)
    finally:
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)
    return _bench.publish(result, out, a.name, lambda path: plot(result, path), print_report)


def print_report(res: dict) -> None:
    st, ex = res["settings"], res["extraction"]
    print()
    print(f"== scale: {st['data']} {st['rows']:,} rows -> {st['backbone']} weights={st['weights']} at "
          f"{st['image_size']} px ==")
    print(_bench.table([ex], [("rows", "rows"), ("dim", "dim"), ("wall_s", "extract s", 1),
                              ("img_per_s", "img/s", 1), ("peak_tree_rss_mb", "peak tree RSS MB", 0),
                              ("store_rows_bytes_per_row", "row shards B/row", 0),
                              ("store_view_bytes_per_row", "view B/row", 0),
                              ("raw_feature_bytes_per_row", "float32 B/row", 0)]))
    t = ex["timings"]
    print("extraction timings: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items() if v))
    print(f"cold extraction: {_bench.fmt(res.get('cold_extraction_s'), 1)} s ({res.get('cold_extraction_source')})")
    print()
    print(_bench.table(res["heads"], make_tables.HEAD_COLUMNS))
    if res.get("raw_pixels"):
        print(_bench.table([res["raw_pixels"]], [("head", "head"), ("features", "features"),
                                                 ("test_accuracy", "test acc", 4), ("fit_s", "fit s", 1)]))
    print(f"published: {res['published_source']}")


def plot(res: dict, path: Path) -> None:
    rows = list(res["heads"]) + ([res["raw_pixels"]] if res.get("raw_pixels") else [])
    fig = _bench.new_figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    names = [r["head"] if r["features"].startswith(res["settings"]["backbone"]) else "logreg (raw pixels)"
             for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["test_accuracy"] or 0 for r in rows], width=0.4, label="this run (test)")
    ax.bar([i + 0.2 for i in x], [r["published_raw_pixel_accuracy"] or 0 for r in rows], width=0.4,
           label="published raw-pixel, same kind of classifier", color="#bbbbbb")
    for i, r in zip(x, rows):
        ax.text(i - 0.2, (r["test_accuracy"] or 0) + 0.005, f"{r['fit_s']:.0f}s", ha="center", fontsize=7)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=20, fontsize=8)
    lo = min([r["test_accuracy"] or 1 for r in rows] + [0.8]) - 0.05
    ax.set_ylim(max(0.0, lo), 1.0)
    ax.set_ylabel("test accuracy (fit seconds above the bars)")
    ax.legend(fontsize=8, loc="upper right")
    st, ex = res["settings"], res["extraction"]
    ax.set_title(f"{st['data']} {st['rows']:,} rows, {st['backbone']} {st['image_size']} px: "
                 f"{ex['img_per_s']:.0f} img/s, peak RSS {ex['peak_tree_rss_mb']:.0f} MB", fontsize=9)
    _bench.save_figure(fig, path)


if __name__ == "__main__":
    main()
