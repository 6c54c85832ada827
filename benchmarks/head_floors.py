#!/usr/bin/env python3
"""Stage two's floors at scale: the arithmetic each of issue 16's goals needs, against this
machine's fastest float32 products, next to what scale.py measured and what the goal allows.

Reads a ``scale.py`` result (``--scale``): the cold extraction time, the training matrix's
shape, and per head the measured fit, sweep and predict times with the fit's iterations or
epochs. Measures on this machine, in this run (medians of ``--repeats``):

* **peak**: the float32 product of two N x N matrices (N = 4,096), with numpy (OpenBLAS) and
  with torch (MKL / oneDNN): the best rate either reaches. No float32 work of these libraries
  runs faster here, so work / peak is a floor on its time;
* **pass**: one pass of the linear solvers' two products over a matrix of the training shape
  (n x d times d x k, then k x n times n x d, numpy, in the solver's slices), which logreg and
  svm pay once per L-BFGS evaluation; and **read**: one ``X @ v`` over it (memory bandwidth).

The work of each goal, in multiply-adds (d features, k classes, h hidden units):

* logreg / svm, one fit: at least ``n_iter`` passes (L-BFGS evaluates at least once an
  iteration) of 2 n d k;
* mlp, one fit: ``n_epochs`` x (n_fit (2 d h + 3 h k) + n_val (d h + h k)), n_val the head's
  ``validation_fraction`` of the rows (the forward, the weights' gradients and the hidden
  layer's; no input gradient); its default sweep: the same for every network of the default
  grid (patience 10 exceeds the 7 planned epochs, so every network trains them all);
* linear, one fit: ``n_epochs`` x (n_fit 2 d k + n_val d k);
* kNN predict: n_test x n_train x d.

A goal whose floor at the peak rate exceeds its allowance (its fraction x the cold
extraction) cannot be met on this machine by any float32 implementation of the same work.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

#: issue 16's allowances, as fractions of the cold extraction time
GOALS = {"fit": 0.02, "sweep": 0.10, "predict": 0.02}
DEFAULT_SCALE = _bench.RESULTS_DIR / "scale_64px_epyc_session17.json"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default=str(DEFAULT_SCALE), help="a scale.py result JSON (default: %(default)s)")
    p.add_argument("--classes", type=int, default=10, help="classes of the scale.py data (Fashion-MNIST: 10)")
    p.add_argument("--square", type=int, default=4096, help="N of the N x N x N peak product")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smoke test: N = 256, a 4,096-row pass, 1 repeat")
    p.add_argument("--out", default=str(_bench.RESULTS_DIR))
    p.add_argument("--name", default="head_floors")
    a = p.parse_args(argv)
    if a.quick:
        a.square, a.repeats = 256, 1
    return a


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _bench.median(times)


def measure_rates(n: int, d: int, k: int, square: int, repeats: int) -> dict:
    """This machine's float32 rates: the peak product, the solver's pass and one read."""
    import numpy as np
    import torch

    from featcache.train.heads.solvers import NUMPY_PASS_ROWS

    rng = np.random.default_rng(0)
    A = rng.standard_normal((square, square), dtype=np.float32)
    B = rng.standard_normal((square, square), dtype=np.float32)
    At, Bt = torch.from_numpy(A), torch.from_numpy(B)
    flop = 2.0 * square**3
    peak = {"numpy": flop / timed(lambda: A @ B, repeats) / 1e9,
            "torch": flop / timed(lambda: At @ Bt, repeats) / 1e9}
    X = rng.standard_normal((n, d), dtype=np.float32)
    W = rng.standard_normal((d, k), dtype=np.float32)
    GT = rng.standard_normal((k, n), dtype=np.float32)
    v = rng.standard_normal(d, dtype=np.float32)

    def one_pass():
        for a in range(0, n, NUMPY_PASS_ROWS):
            X[a : a + NUMPY_PASS_ROWS] @ W
            GT[:, a : a + NUMPY_PASS_ROWS] @ X[a : a + NUMPY_PASS_ROWS]

    pass_s = timed(one_pass, repeats)
    read_s = timed(lambda: X @ v, repeats)
    return {"peak_gflops": max(peak.values()), "peak_gflops_by_library": peak,
            "pass_s": pass_s, "pass_gflops": 4.0 * n * d * k / pass_s / 1e9,
            "read_s": read_s, "read_gb_s": X.nbytes / read_s / 1e9}


def mlp_macs(n_rows: int, d: int, k: int, widths: list[int], epochs: int, validation_fraction: float) -> float:
    """Multiply-adds of training one-hidden-layer networks of ``widths`` for ``epochs`` epochs."""
    n_val = round(n_rows * validation_fraction)
    n_fit = n_rows - n_val
    return float(epochs) * sum(n_fit * (2 * d * h + 3 * h * k) + n_val * (d * h + h * k) for h in widths)


def shape_of(head: dict) -> tuple[int, int]:
    """(training rows, features) of a scale.py head entry ("efficientnet_lite0 1280-d")."""
    return int(head["n_train"]), int(head["features"].split()[-1].removesuffix("-d"))


def goals_of(scale: dict, k: int) -> list[dict]:
    """One row per goal: its work in multiply-adds and what scale.py measured."""
    from featcache.train.heads.torch_heads import LinearHead, MLPHead

    heads = {h["head"]: h for h in scale["heads"]}
    rows = []

    def add(head, what, macs, note, **extra):
        measured = heads[head].get(f"{what}_s")
        rows.append({"goal": f"{head} {what}", "head": head, "kind": what, "gmac": macs / 1e9,
                     "measured_s": measured, "note": note, **extra})

    for name in ("logreg", "svm"):
        h = heads.get(name)
        if h and h.get("n_iter"):
            n, d = shape_of(h)
            add(name, "fit", h["n_iter"] * 2.0 * n * d * k, f"{h['n_iter']} passes of 2 n d k", passes=h["n_iter"])
    h = heads.get("mlp")
    if h and h.get("n_epochs"):
        n, d = shape_of(h)
        mlp = MLPHead()
        add("mlp", "fit", mlp_macs(n, d, k, [mlp.hidden_sizes[0]], h["n_epochs"], mlp.validation_fraction),
            f"{h['n_epochs']} epochs, 1 x {mlp.hidden_sizes[0]} units")
        grid = MLPHead._default_grid
        widths = [size[0] for size in grid["hidden_sizes"] for _ in grid["dropout"]]
        add("mlp", "sweep", mlp_macs(n, d, k, widths, h["n_epochs"], mlp.validation_fraction),
            f"{len(widths)} networks of {sum(widths):,} units in all, {h['n_epochs']} epochs each")
    h = heads.get("linear")
    if h and h.get("n_epochs"):
        n, d = shape_of(h)
        frac = LinearHead().validation_fraction
        n_val = round(n * frac)
        add("linear", "fit", h["n_epochs"] * ((n - n_val) * 2.0 * d * k + n_val * d * k), f"{h['n_epochs']} epochs")
    h = heads.get("knn")
    if h:
        n, d = shape_of(h)
        add("knn", "predict", float(h["n_test"]) * n * d, "n_test x n_train x d")
    return rows


def main(argv=None) -> dict:
    a = parse(argv)
    scale = json.loads(Path(a.scale).read_text())
    info = _bench.machine_info()
    extraction = float(scale["cold_extraction_s"])
    n, d = shape_of(scale["heads"][0])
    if a.quick:
        n, d = 4096, 128
    print(f"head_floors: {_bench.relpath(a.scale)} (cold extraction {extraction:.1f} s); "
          f"pass over {n:,} x {d} x {a.classes}; peak product {a.square}^3")
    print(f"machine: {_bench.describe_machine(info)}", flush=True)
    rates = measure_rates(n, d, a.classes, a.square, a.repeats)
    rows = goals_of(scale, a.classes)
    for r in rows:
        r["allowed_s"] = GOALS[r["kind"]] * extraction
        r["floor_peak_s"] = 2.0 * r["gmac"] / rates["peak_gflops"]
        if "passes" in r:  # logreg, svm: their passes at this machine's rate for their shape
            r["floor_shape_s"] = r["passes"] * rates["pass_s"]
            r["floor_read_s"] = r["passes"] * rates["read_s"]
        r["reachable"] = r["floor_peak_s"] <= r["allowed_s"]
    result = {"benchmark": "head_floors", "command": _bench.command_line(),
              "settings": {"scale": _bench.relpath(a.scale), "classes": a.classes, "square": a.square,
                           "repeats": a.repeats, "quick": a.quick, "pass_shape": [n, d, a.classes]},
              "machine": _bench.finish_info(info), "cold_extraction_s": extraction, "goals": GOALS,
              "rates": rates, "rows": rows}
    return _bench.publish(result, a.out, a.name, lambda path: _plot(result, path), _report)


def _plot(result: dict, path: Path) -> None:
    rows = result["rows"]
    fig = _bench.new_figure(7.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(rows))
    for offset, key, label in ((-0.27, "floor_peak_s", "floor at peak float32"),
                               (0.0, "measured_s", "measured (scale.py)"), (0.27, "allowed_s", "goal allows")):
        ax.bar([x + offset for x in xs], [r.get(key) or 0 for r in rows], width=0.27, label=label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["goal"] for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    ax.set_title(f"{result['machine']['cpu_model']}, peak {result['rates']['peak_gflops']:.0f} GFLOP/s float32",
                 fontsize=9)
    _bench.save_figure(fig, path)


def _report(result: dict) -> None:
    rates = result["rates"]
    print()
    print(f"== head_floors: this machine's float32 rates, medians of {result['settings']['repeats']} ==")
    print(f"peak product {rates['peak_gflops']:.0f} GFLOP/s (numpy {rates['peak_gflops_by_library']['numpy']:.0f},"
          f" torch {rates['peak_gflops_by_library']['torch']:.0f}); the solver's pass {rates['pass_s'] * 1e3:.1f} ms"
          f" ({rates['pass_gflops']:.0f} GFLOP/s); one read {rates['read_s'] * 1e3:.1f} ms"
          f" ({rates['read_gb_s']:.1f} GB/s)")
    print(_bench.table(result["rows"], [
        ("goal", "goal"), ("gmac", "work GMAC", 1), ("floor_peak_s", "floor at peak s", 2),
        ("floor_shape_s", "at the pass's rate s", 2), ("floor_read_s", "one read a pass s", 2),
        ("measured_s", "measured s", 2), ("allowed_s", "goal allows s", 2), ("reachable", "reachable"),
        ("note", "work")]))


if __name__ == "__main__":
    main()
