#!/usr/bin/env python3
"""Freed memory kept for reuse during the forward (featcache.allocator), on vs off, per backbone.

For each backbone (``featcache backbones`` or ``--only``; random init, ``--weights none``), in
a fresh process: the FeatureExtractor at ``--size`` px (or the backbone's own size where it
cannot take it) with the levers ``--compute auto`` picks for a large run, one batch of
``--batch`` seeded random images, the forward timed round-robin with
``featcache.allocator.keep_freed_memory`` off and on (``--repeats`` rounds, median), and
whether both give the same bits. Every backbone ``extract`` runs with ``--compute auto`` on
the CPU gets the setting, so this table is the check that none of them gets slower.

Results accumulate in ``--partial`` (one JSON line per backbone), so an interrupted run
resumes; ``--publish`` writes the table from whatever is there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
from lever_table import _extractor, backbones, measure_backbones, table_options  # noqa: E402


def child(a) -> dict:
    import torch

    from featcache import allocator
    from featcache.extraction import levers

    model, size = _extractor(a.child, a.size)
    x = torch.randn(a.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    chosen = levers.choose(a.child, torch.device("cpu"), compute="auto", precision="float32",
                           images=10**6, pixels=size * size)
    model, setup_s = levers.prepare_timed(model, chosen, levers.to_input(x[:levers.TRACE_ROWS], chosen))
    x = levers.to_input(x, chosen)
    secs: dict = {"off": [], "on": []}
    outs: dict = {}
    with torch.inference_mode():
        model(x)  # warm-up, not timed
        t_budget = time.perf_counter() + a.budget_s
        for _ in range(a.repeats):
            for way in secs:
                with allocator.keep_freed_memory(way == "on"):
                    t0 = time.perf_counter()
                    outs[way] = model(x)
                    secs[way].append(time.perf_counter() - t0)
            if time.perf_counter() > t_budget:
                break
    off, on = _bench.median(secs["off"]), _bench.median(secs["on"])
    return {"backbone": a.child, "size": size, "levers": chosen.describe(), "setup_s": setup_s,
            "rounds": len(secs["on"]), "off_s": off, "on_s": on, "speedup": off / on,
            "identical": bool(torch.equal(outs["off"], outs["on"])), "in_effect": allocator.available()}


def measure_all(a) -> list[dict]:
    def line(r: dict) -> str:
        if "error" in r:
            return f"ERROR {r['error']}"
        return (f"{r['size']:>4} px  {r['levers']:20s} off {r['off_s'] * 1e3:8.1f} ms  on {r['on_s'] * 1e3:8.1f} ms  "
                f"{r['speedup']:5.2f}x  same bits {r['identical']}")

    args = ["--size", str(a.size), "--batch", str(a.batch), "--repeats", str(a.repeats), "--budget-s", str(a.budget_s)]
    return measure_backbones(a, str(Path(__file__).resolve()), args, lambda r: None, line)


def summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    x = sorted(r["speedup"] for r in ok)
    return {"measured": len(ok), "errors": len(rows) - len(ok), "min_speedup": x[0] if x else None,
            "median_speedup": _bench.median(x), "max_speedup": x[-1] if x else None,
            "slower": [r["backbone"] for r in ok if r["speedup"] < 1.0],
            "not_identical": [r["backbone"] for r in ok if not r["identical"]]}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="input size in px (default 64)")
    p.add_argument("--batch", type=int, default=32, help="rows per forward (extract's default batch)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds, off and on each (median)")
    p.add_argument("--budget-s", type=float, default=30.0, help="stop adding rounds after this many seconds")
    table_options(p, name="heap_reuse", timeout_s=300.0)
    a = p.parse_args(argv)
    if a.quick:
        a.only, a.size, a.repeats, a.batch = a.only or "mobilenet_v3_small", 32, 1, 4
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    if a.child:
        res = child(a)
        print(json.dumps(res, default=_bench._json_default))
        return res
    info = _bench.machine_info("cpu")
    print(f"heap_reuse: {len(backbones(a.only))} backbones at {a.size} px, batch {a.batch}; "
          f"machine: {_bench.describe_machine(info)}", flush=True)
    rows = measure_all(a)
    result = {"benchmark": "heap_reuse", "command": _bench.command_line(),
              "settings": {"quick": a.quick, "size": a.size, "batch": a.batch, "repeats": a.repeats,
                           "weights": "none (seeded random init)"},
              "machine": _bench.finish_info(info), "summary": summary(rows), "rows": rows}
    return _bench.publish(result, a.out, a.name, lambda path: plot(result, path), print_report)


def print_report(res: dict) -> None:
    print()
    print(f"== heap_reuse: {len(res['rows'])} backbones at {res['settings']['size']} px, freed memory kept vs not ==")
    print(_bench.table([r for r in res["rows"] if "error" not in r],
                       [("backbone", "backbone"), ("size", "px"), ("levers", "levers"), ("off_s", "off s", 4),
                        ("on_s", "on s", 4), ("speedup", "on / off speed", 2), ("identical", "same bits")]))
    print(json.dumps(res["summary"]))


def plot(res: dict, path: Path) -> None:
    rows = [r for r in res["rows"] if "error" not in r]
    fig = _bench.new_figure(max(8.0, 0.16 * len(rows)), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(rows)), [r["speedup"] for r in rows])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(list(range(len(rows))))
    ax.set_xticklabels([r["backbone"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("forward speed, freed memory kept / not")
    ax.set_title(f"heap reuse at {res['settings']['size']} px, batch {res['settings']['batch']}, "
                 f"{res['machine']['cpu_model']} x{res['machine']['usable_cores']}", fontsize=9)
    _bench.save_figure(fig, path)


if __name__ == "__main__":
    main()
