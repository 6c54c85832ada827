#!/usr/bin/env python3
"""Profile behind a recommended library change: BLAS threads for in-process head fits.

A head fitted without a sweep (``fit-head`` without ``--sweep``, ``fit_head(...)`` with
no grid, the ``predict_proba`` calls that score val/test, ``predict``) runs in the
calling process with the BLAS/OpenMP thread pools at their default size (one thread
per core). Sweeps do not have this problem: joblib's loky workers start with one
BLAS thread each. On a small, shared machine the multi-threaded BLAS calls of a small
problem spend their time waiting for each other: this script fits each head on the
same features with the default thread pools and with ``threadpoolctl``'s
``threadpool_limits(1)``, alternating, and reports the median times and their ratio.

Features: a cached featcache view (``--view PATH``), or by default a cold extraction
of ``builtin:digits`` with resnet18 (seeded random weights) at 32 px into a temporary
cache: the same view as ``compare_heads.py``'s default.
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


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--view", default=None, help="a featcache view file (default: extract builtin:digits)")
    p.add_argument("--heads", default="logreg,svm,knn,ncm,linear")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 repeats, logreg and ncm only")
    p.add_argument("--out", default=str(_bench.RESULTS_DIR))
    p.add_argument("--name", default="blas_threads")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.heads = 2, "logreg,ncm"
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    _bench.warm_imports()
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    from featcache.extraction.engine import extract
    from featcache.train.evaluate import make_splits
    from featcache.train.heads import make_head
    from featcache.store.views import load_features

    info = _bench.machine_info()
    tmp = None
    try:
        view = a.view
        if view is None:
            tmp = tempfile.mkdtemp(prefix="featcache-bench-blas-")
            view = extract("builtin:digits", backbone="resnet18", weights="none", image_size=32, cache_dir=tmp).view
        f = load_features(view)
        assigned = make_splits(f.labels, f.split)
        tr, te = np.flatnonzero(assigned == "train"), np.flatnonzero(assigned == "test")
        X, y, Xt = f.features[tr], f.labels[tr], f.features[te]
        pools = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads")} for p in threadpool_info()]
        print(f"blas_threads: {len(tr):,} x {X.shape[1]} training rows from {view}; thread pools {pools}")
        print(f"machine: {_bench.describe_machine(info)}", flush=True)
        times: dict = {}
        for rep in range(a.repeats):
            for h in a.heads.split(","):
                for limit in ((None, 1) if rep % 2 == 0 else (1, None)):
                    with threadpool_limits(limits=limit):
                        t0 = time.perf_counter()
                        head = make_head(h).fit(X, y)
                        t1 = time.perf_counter()
                        head.predict_proba(Xt)
                        t2 = time.perf_counter()
                    times.setdefault((h, limit), []).append((t1 - t0, t2 - t1))
        rows = []
        for h in a.heads.split(","):
            d, o = times[(h, None)], times[(h, 1)]
            fit_d, fit_1 = _bench.median(x[0] for x in d), _bench.median(x[0] for x in o)
            pred_d, pred_1 = _bench.median(x[1] for x in d), _bench.median(x[1] for x in o)
            rows.append({"head": h, "fit_s_default_threads": fit_d, "fit_s_one_thread": fit_1,
                         "fit_speedup": fit_d / fit_1, "predict_s_default_threads": pred_d,
                         "predict_s_one_thread": pred_1, "predict_speedup": pred_d / pred_1})
        result = {"benchmark": "blas_threads", "command": _bench.command_line(),
                  "settings": {"view": str(view), "rows": int(len(tr)), "dim": int(X.shape[1]), "heads": a.heads,
                               "repeats": a.repeats, "quick": a.quick, "thread_pools": pools},
                  "machine": _bench.finish_info(info), "rows": rows,
                  "raw": {f"{h}|{lim}": v for (h, lim), v in times.items()}}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    out = Path(a.out)
    _bench.atomic_write_json(out / f"{a.name}.json", result)
    fig = _bench.new_figure(7.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(rows))
    ax.bar([i - 0.2 for i in xs], [r["fit_s_default_threads"] for r in rows], width=0.4, label="default BLAS threads")
    ax.bar([i + 0.2 for i in xs], [r["fit_s_one_thread"] for r in rows], width=0.4, label="threadpool_limits(1)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["head"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("fit seconds (median)")
    ax.legend(fontsize=8)
    ax.set_title(f"in-process head fits, {len(tr):,} x {X.shape[1]}, {info['cpu_model']} x{info['usable_cores']}",
                 fontsize=9)
    _bench.save_figure(fig, out / f"{a.name}.png")
    print()
    print(f"== blas_threads: median of {a.repeats}, alternating ==")
    print(_bench.table(rows, [("head", "head"), ("fit_s_default_threads", "fit s default", 3),
                              ("fit_s_one_thread", "fit s 1 thread", 3), ("fit_speedup", "x faster", 2),
                              ("predict_s_default_threads", "predict s default", 4),
                              ("predict_s_one_thread", "predict s 1 thread", 4), ("predict_speedup", "x faster", 2)]))
    print(f"wrote {out / (a.name + '.json')} and {out / (a.name + '.png')}")
    return result


if __name__ == "__main__":
    main()
