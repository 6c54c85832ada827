#!/usr/bin/env python3
"""kNN's similarity products: torch's (MKL) against numpy's (OpenBLAS), whole predicts in fresh processes.

``featcache.train.heads._torch_train.numpy_gemm`` makes the float32 candidate search of a large
kNN predict multiply with numpy on x86 CPUs not made by Intel (MKL takes slower paths there).
This script measures both outcomes of that rule on this machine: each repeat runs, in a fresh
process per mode (alternating which goes first), ``KNNHead().fit(X, y)`` then a timed
``predict`` of the query rows, once with the rule forced to torch's product and once to
numpy's. The medians, their ratio, and whether both predicted the same labels (they must: the
search is exact either way) are reported; CPUs with native bfloat16 search in bfloat16 with
torch whatever the rule, so there the two modes are the same code.

Data: the Fashion-MNIST view of ``benchmarks/scale.py`` (``--view``: its official train rows,
the first 51,000, against its 10,000 test rows), or by default seeded non-negative random rows
of the same shape (51,000 x 1,280 against 10,000): the products cost the same.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

MODES = ("torch", "numpy")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--view", default=None, help="a featcache view file with train/test splits (default: random rows)")
    p.add_argument("--train", type=int, default=51_000, help="training rows (default 51,000)")
    p.add_argument("--queries", type=int, default=10_000, help="query rows (default 10,000)")
    p.add_argument("--dim", type=int, default=1280, help="features of the random rows (default 1,280)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke test: 3,000 x 64 against 500, 1 repeat")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(_bench.RESULTS_DIR))
    p.add_argument("--name", default="knn_gemm")
    a = p.parse_args(argv)
    if a.quick:
        a.train, a.queries, a.dim, a.repeats = 3000, 500, 64, 1
    return a


def write_data(a, path: Path) -> dict:
    """The rows both modes use, saved once as .npy files under ``path``."""
    import numpy as np

    if a.view:
        from featcache.store.views import load_features

        f = load_features(a.view)
        split = np.asarray(f.split).astype(str)
        train, test = np.flatnonzero(split == "train")[: a.train], np.flatnonzero(split == "test")[: a.queries]
        X, y, Q = f.features[train], f.labels[train], f.features[test]
    else:
        rng = np.random.default_rng(0)
        X = rng.random((a.train, a.dim), dtype=np.float32)
        y = rng.integers(0, 10, a.train)
        Q = rng.random((a.queries, a.dim), dtype=np.float32)
    for name, arr in (("X", X), ("y", y), ("Q", Q)):
        np.save(path / f"{name}.npy", np.ascontiguousarray(arr))
    return {"train": int(len(X)), "queries": int(len(Q)), "dim": int(X.shape[1])}


def child(mode: str, data: str) -> None:
    """One fresh process: fit, then time one predict with the rule forced to ``mode``."""
    import numpy as np

    import featcache.train.heads._torch_train as torch_train
    import featcache.train.heads.neighbors as neighbors
    from featcache.train.heads.sklearn_heads import KNNHead

    torch_train.x86_non_intel = lambda: mode == "numpy"
    neighbors.TORCH_MIN_WORK = 0  # the torch search whatever the size, as on the full shape
    X, y, Q = (np.load(Path(data) / f"{n}.npy") for n in ("X", "y", "Q"))
    head = KNNHead().fit(X, y)
    t0 = time.perf_counter()
    labels = head.predict(Q)
    predict_s = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "predict_s": predict_s, "labels": labels.tolist()}))


def main(argv=None) -> dict:
    a = parse(argv)
    if a.child:
        child(a.child, a.data)
        return {}
    info = _bench.machine_info()
    with tempfile.TemporaryDirectory(prefix="featcache-bench-knn-") as tmp:
        shape = write_data(a, Path(tmp))
        print(f"knn_gemm: {shape['queries']:,} queries against {shape['train']:,} x {shape['dim']} rows, "
              f"{'view ' + a.view if a.view else 'random rows'}")
        print(f"machine: {_bench.describe_machine(info)}", flush=True)
        runs, labels = [], {}
        for rep in range(a.repeats):
            for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
                res = _bench.run_child([sys.executable, __file__, "--child", mode, "--data", tmp], timeout=1800)
                labels.setdefault(mode, res.pop("labels"))
                res.pop("memory_samples", None)
                runs.append({**res, "repeat": rep})
                print(f"  repeat {rep + 1}/{a.repeats} {mode:5s}: predict {res['predict_s']:.2f} s", flush=True)
    med = {m: _bench.median(r["predict_s"] for r in runs if r["mode"] == m) for m in MODES}
    summary = {"predict_s_torch": med["torch"], "predict_s_numpy": med["numpy"],
               "torch_over_numpy": med["torch"] / med["numpy"], "same_labels": labels["torch"] == labels["numpy"],
               "rule_picks": "numpy" if _rule_picks_numpy() else "torch"}
    result = {"benchmark": "knn_gemm", "command": _bench.command_line(),
              "settings": {**shape, "view": a.view, "repeats": a.repeats, "quick": a.quick},
              "machine": _bench.finish_info(info), "summary": summary, "runs": runs}
    return _bench.publish(result, a.out, a.name, lambda path: _plot(result, path), _report)


def _rule_picks_numpy() -> bool:
    from featcache.environment import x86_non_intel

    return x86_non_intel()


def _plot(result: dict, path: Path) -> None:
    s = result["summary"]
    fig = _bench.new_figure(5.0, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(["torch (MKL)", "numpy (OpenBLAS)"], [s["predict_s_torch"], s["predict_s_numpy"]])
    ax.set_ylabel("kNN predict s (median)")
    st = result["settings"]
    ax.set_title(f"{st['queries']:,} against {st['train']:,} x {st['dim']}, {result['machine']['cpu_model']}",
                 fontsize=9)
    _bench.save_figure(fig, path)


def _report(result: dict) -> None:
    s = result["summary"]
    print()
    print(f"== knn_gemm: medians of {result['settings']['repeats']}, a fresh process each ==")
    print(_bench.table([s], [("predict_s_torch", "torch s", 2), ("predict_s_numpy", "numpy s", 2),
                             ("torch_over_numpy", "torch / numpy", 2), ("same_labels", "same labels"),
                             ("rule_picks", "the rule picks")]))


if __name__ == "__main__":
    main()
