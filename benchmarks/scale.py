#!/usr/bin/env python3
"""Scale (issue 8): all 70,000 Fashion-MNIST images through extract, then every head.

1. ``extract("torchvision:FashionMNIST")`` (60,000 train + 10,000 test rows, read from
   the IDX files; nothing is written out as image files) into a fresh, empty cache:
   images/s, the stage timings, peak memory of the process tree, store size on disk
   per row (row shards and the view file).
2. Every registered head on the official split, through ``fit_head``: the view's own
   ``train``/``test`` columns; ``fit_head`` carves its validation rows (15 %, seeded,
   stratified) out of the 60,000 training rows, so heads train on 51,000 rows and
   are scored once on the official 10,000 test rows. Default parameters (one fit per
   head); ``--sweep`` fits each head's default grid instead (chosen on validation).
3. The same ``logreg`` head on the raw 784 pixels (scaled to [0, 1]), same split,
   same run: the in-house baseline.
4. Next to each head, the published Fashion-MNIST raw-pixel benchmark for the same
   kind of classifier (see ``PUBLISHED`` below for the source and its caveats).

Peak memory: a background thread samples VmRSS of this process and all its
descendants (DataLoader workers, joblib/loky workers) every 100 ms, per phase;
plus this process's own VmHWM at the end.

Fast default (2 CPU cores, about 15-25 minutes for all 70,000 images on a busy
machine): efficientnet_lite0 with its packaged ImageNet weights at 32 px (the
28x28 images are upscaled to 32x32), batch 128. ``--limit N`` keeps N rows (6/7
from train, 1/7 from test, the first of each) for a quick run. ``--full`` (GPU
machine): resnet50 at 224 px in bfloat16 with every head's default sweep.
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
    p.add_argument("--sweep", action="store_true", help="fit each head's default grid (chosen on validation)")
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
        a.sweep = True
    a.backbone = a.backbone or "efficientnet_lite0"
    a.weights = a.weights or ("DEFAULT" if a.backbone == "efficientnet_lite0" else "none")
    if a.image_size is None and not a.full:
        a.image_size = 32  # efficientnet_lite0 needs at least 32 px (a 5x5 kernel on a 4x4 map below that)
    if a.quick:
        a.limit = a.limit or 140
        a.heads = a.heads or "ncm,knn,logreg"
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


def main(argv=None) -> dict:
    a = parse(argv)
    import_s = _bench.warm_imports()
    import numpy as np

    from featcache.extraction.sources import load_manifest
    from featcache.extraction.engine import extract
    from featcache.train.evaluate import compute_metrics, make_splits, sweep
    from featcache.train.heads import default_grid, list_heads, make_head
    from featcache.train.fitting import fit_head

    heads = a.heads.split(",") if a.heads else list_heads()
    info = _bench.machine_info(a.device)
    own_cache = a.cache is None
    cache = a.cache or tempfile.mkdtemp(prefix="featcache-bench-scale-")
    mem = _bench.TreeMemory(interval=0.1)
    result: dict = {}
    out = Path(a.out)
    extraction, head_rows, raw = None, [], None

    def snapshot(complete: bool) -> dict:
        """The result so far; written after every phase, so a long run that is stopped keeps what it measured."""
        return {
            "benchmark": "scale",
            "complete": complete,
            "command": _bench.command_line(),
            "settings": {"data": a.data, "root": a.root, "limit": a.limit, "rows": n, "backbone": a.backbone,
                         "weights": a.weights, "image_size": a.image_size or "native", "batch_size": a.batch_size,
                         "workers": a.workers, "device": a.device, "sweep": a.sweep, "heads": heads, "seed": a.seed,
                         "full": a.full, "quick": a.quick, "import_s": import_s,
                         "blas_threads": a.blas_threads},
            "machine": _bench.finish_info(dict(info)),
            "memory_method": ("peak_tree_rss_mb: max over 100 ms samples of the sum of VmRSS over this process and "
                              "all its descendants (DataLoader and joblib workers), per phase; shared pages count "
                              "once per process (upper bound)."),
            "extraction": extraction,
            "heads": head_rows,
            "raw_pixels": raw,
            "published_source": PUBLISHED_SOURCE,
            "process_vmhwm_mb": _bench.vm_hwm_mb("self"),
            "peak_tree_rss_mb": mem.peak["rss_mb"],
        }

    n = 0
    try:
        with mem:
            m = load_manifest(a.data, cache_dir=cache, root=a.root)
            if a.limit and a.limit < len(m):
                m = limited(m, a.limit)
            n = len(m)
            print(f"scale: {a.data} ({n:,} rows: {sum(s == 'train' for s in m.split):,} train, "
                  f"{sum(s == 'test' for s in m.split):,} test) -> {a.backbone} (weights {a.weights}) at "
                  f"{a.image_size or 'native'} px, batch {a.batch_size}; heads {heads}"
                  f"{' with default sweeps' if a.sweep else ' with default parameters'}", flush=True)
            print(f"machine: {_bench.describe_machine(info)}", flush=True)

            with mem.phase("extract"):
                t0 = time.perf_counter()
                r = extract(m, backbone=a.backbone, weights=a.weights, image_size=a.image_size, cache_dir=cache,
                            batch_size=a.batch_size, workers=a.workers, device=a.device,
                            progress=sys.stderr.isatty())
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
            print(f"  extraction: {r.rows:,} rows x {r.dim} in {ext_s:.1f} s ({extraction['img_per_s']:.0f} img/s), "
                  f"peak tree RSS {extraction['peak_tree_rss_mb']:.0f} MB; store {rows_bytes / r.rows:.0f} B/row "
                  f"in row shards + {view_bytes / r.rows:.0f} B/row in the view", flush=True)
            _bench.atomic_write_json(out / f"{a.name}.json", snapshot(False))

            import contextlib

            from threadpoolctl import threadpool_limits

            cap = (threadpool_limits(limits=a.blas_threads) if a.blas_threads else contextlib.nullcontext())
            cap.__enter__()
            for h in heads:
                with mem.phase(h):
                    t0 = time.perf_counter()
                    fr = fit_head(r.view, h, use_default_grid=a.sweep, seed=a.seed, cache_dir=cache,
                                  n_jobs=a.n_jobs, log=False)
                    wall = time.perf_counter() - t0
                test = fr.metrics.get("test", {})
                kind, pub = PUBLISHED.get(h, ("", None))
                head_rows.append({
                    "head": h, "features": f"{a.backbone} {r.dim}-d", "params": fr.params,
                    "n_combos": len(fr.sweep) or 1, "test_accuracy": test.get("accuracy"),
                    "balanced_accuracy": test.get("balanced_accuracy"), "macro_f1": test.get("macro_f1"),
                    "val_accuracy": fr.metrics.get("val", {}).get("accuracy"),
                    "fit_s": fr.timings["fit_s"], "predict_s": fr.timings["predict_s"], "wall_s": wall,
                    "peak_tree_rss_mb": mem.phases[h]["rss_mb"], "published_kind": kind,
                    "published_raw_pixel_accuracy": pub, "split": fr.split})
                print(f"  {h:7s} test acc {test.get('accuracy', float('nan')):.4f} fit {fr.timings['fit_s']:.1f} s "
                      f"predict {fr.timings['predict_s']:.2f} s peak RSS {mem.phases[h]['rss_mb']:.0f} MB", flush=True)
                _bench.atomic_write_json(out / f"{a.name}.json", snapshot(False))

            raw = None
            if not a.no_raw:
                with mem.phase("raw-logreg"):
                    X = raw_pixels(m)
                    assigned = make_splits(m.labels, np.asarray(m.split, dtype=object), seed=a.seed)
                    idx = {s: np.flatnonzero(assigned == s) for s in ("train", "val", "test")}
                    t0 = time.perf_counter()
                    if a.sweep:
                        res = sweep(lambda p: make_head("logreg", **p), default_grid("logreg"), X[idx["train"]],
                                    m.labels[idx["train"]], X[idx["val"]], m.labels[idx["val"]], n_jobs=a.n_jobs)
                        head, params = res.best_estimator, res.best_params
                    else:
                        head, params = make_head("logreg").fit(X[idx["train"]], m.labels[idx["train"]]), {}
                    fit_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    proba = head.predict_proba(X[idx["test"]])
                    predict_s = time.perf_counter() - t0
                    pred = head.classes_[np.argmax(proba, axis=1)]
                    met = compute_metrics(m.labels[idx["test"]], pred, class_names=m.class_names)
                raw = {"head": "logreg", "features": "raw pixels 784-d", "params": params,
                       "n_combos": len(default_grid("logreg")["C"]) if a.sweep else 1,
                       "test_accuracy": met["accuracy"], "balanced_accuracy": met["balanced_accuracy"],
                       "macro_f1": met["macro_f1"], "fit_s": fit_s, "predict_s": predict_s,
                       "peak_tree_rss_mb": mem.phases["raw-logreg"]["rss_mb"],
                       "published_kind": PUBLISHED["logreg"][0],
                       "published_raw_pixel_accuracy": PUBLISHED["logreg"][1],
                       "n_train": int(len(idx["train"])), "n_test": int(len(idx["test"]))}
                print(f"  raw-pixel logreg test acc {met['accuracy']:.4f} fit {fit_s:.1f} s", flush=True)
            cap.__exit__(None, None, None)
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
    rows = list(res["heads"]) + ([res["raw_pixels"]] if res.get("raw_pixels") else [])
    print()
    print(_bench.table(rows, [("head", "head"), ("features", "features"), ("test_accuracy", "test acc", 4),
                              ("balanced_accuracy", "bal acc", 4), ("macro_f1", "macro-F1", 4),
                              ("fit_s", "fit s", 1), ("predict_s", "predict s", 2),
                              ("peak_tree_rss_mb", "peak RSS MB", 0),
                              ("published_raw_pixel_accuracy", "published raw-pixel acc", 2)]))
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
