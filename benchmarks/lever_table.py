#!/usr/bin/env python3
"""The lever table: every registered backbone, inference levers on vs off, on the CPU.

For each backbone (``featcache backbones``; random init, ``--weights none``: the speed
and the rounding behaviour do not depend on the weights' values), in a fresh process:
the FeatureExtractor (penultimate layer, avg pool) at 64 px (or the backbone's own size
where it cannot take 64 px), one batch of 16 seeded random images, five variants built
side by side:

* ``plain``      eager NCHW float32 (``--compute plain``)
* ``cl``         channels_last model and input
* ``freeze``     torch.jit.trace + freeze + optimize_for_inference, NCHW
* ``cl_freeze``  the same on the channels_last model
* ``onnxruntime`` the extractor exported to ONNX and run by ONNX Runtime

The forward of each variant is timed round-robin (``--repeats`` rounds, median), set-up
time (trace, freeze, first call) is recorded, and every variant's features are compared
with plain at the traced batch (16 rows) and at another batch size (24 rows, so a graph
that baked in the batch size is caught): max relative difference = max |a - b| / max |b|.

Decision per backbone (what ``featcache.extraction.levers`` encodes), among the variants
that ran and stayed within 1e-5 at both batch sizes: unfrozen, channels_last is kept where
``cl`` is at least as fast as ``plain``; freeze is kept where the faster of ``freeze`` and
``cl_freeze`` is at least as fast as that unfrozen choice, and frozen, the model takes
channels_last where ``cl_freeze`` is the faster of the two. A run that freezes so gets the
best of the four variants, one too small to freeze the better of the two unfrozen ones.
ONNX Runtime wins where its variant is at least as fast as that best of four; a run then uses
it instead once it has the work to repay its larger set-up: ``WINS_ONNXRUNTIME`` maps each such
backbone to that break-even, in images at 224 px (its extra set-up over the best torch
variant, divided by the seconds it saves an image, from the same row).

The script writes ``results/<--name>.json`` with this CPU's kind (the instruction set torch
dispatches on: ``AVX512``, ``AVX2``, ...) and prints the sets ``MEASURED``,
``LOSES_CHANNELS_LAST``, ``LOSES_FREEZE`` and ``LOSES_CHANNELS_LAST_FROZEN``: the table of
that kind in ``featcache/extraction/lever_tables.py`` (``levers_all.json``: AVX512,
``levers_avx2.json``: AVX2); tests/test_levers.py checks each table there against its file.

Results accumulate in ``--partial`` (one JSON line per backbone), so an interrupted run
resumes; ``--publish`` writes the table from whatever is there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

VARIANTS = ("plain", "cl", "freeze", "cl_freeze", "onnxruntime")
ROWS, OTHER_ROWS, TOLERANCE = 16, 24, 1e-5
FREEZE_MIN_IMAGES = 64  # featcache.extraction.levers.FREEZE_MIN_WORK in 224-px images
NEVER_REPAID = 10**9  # the break-even, in images, of a set-up no faster forward repays


# --------------------------------------------------------------------------- child


def _extractor(name: str, size: int):
    """(FeatureExtractor in eval mode, input size used)."""
    import torch

    from featcache.errors import FeatcacheError
    from featcache.extraction.layers import FeatureExtractor
    from featcache.extraction.identity import resolve_identity

    def identity(**size):
        return resolve_identity(name, weights="none", **size)

    try:  # --size 0: the backbone's own size
        ident, entry, choice = identity(image_size=size) if size else identity()
    except FeatcacheError:  # fixed-size networks (ViT, ...): their own size
        ident, entry, choice = identity()
    torch.manual_seed(0)
    return FeatureExtractor(entry.build(choice)).eval(), int(ident.preprocess["crop"])


def _variants(model, x):
    """{variant: (module, input, set-up s or None, error or None)}."""
    import copy

    import torch

    from featcache.extraction.levers import TRACE_ROWS, Levers, prepare_timed

    out = {"plain": (model, x, None, None)}
    for name, lev in (("cl", Levers(channels_last=True)), ("freeze", Levers(freeze=True)),
                      ("cl_freeze", Levers(channels_last=True, freeze=True)),
                      ("onnxruntime", Levers(onnxruntime=True))):
        xin = x.contiguous(memory_format=torch.channels_last) if lev.channels_last else x
        try:
            mod, setup = prepare_timed(copy.deepcopy(model), lev, xin[:TRACE_ROWS])  # as extract does
            out[name] = (mod, xin, setup if lev.freeze or lev.onnxruntime else None, None)
        except Exception as e:  # noqa: BLE001 - recorded in the table
            out[name] = (None, xin, None, f"{type(e).__name__}: {str(e)[:300]}")
    return out


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def child(a) -> dict:
    import torch

    from featcache.extraction.levers import to_input, Levers

    model, size = _extractor(a.child, a.size)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, 3, size, size, generator=gen)
    x2 = torch.randn(OTHER_ROWS, 3, size, size, generator=gen)
    res = {"backbone": a.child, "size": size, "variants": {}}
    with torch.inference_mode():
        ref, ref2 = model(x), model(x2)
        vs = _variants(model, x)
        times = {k: [] for k in vs}
        t_budget = time.perf_counter() + a.budget_s
        for rep in range(a.repeats):
            for k, (mod, xin, _, err) in vs.items():
                if mod is not None:
                    t0 = time.perf_counter()
                    mod(xin)
                    times[k].append(time.perf_counter() - t0)
            if time.perf_counter() > t_budget:
                break
        for k, (mod, xin, setup, err) in vs.items():
            row = {"error": err, "setup_s": setup}
            if mod is not None:
                lev = Levers(channels_last=k.startswith("cl"))
                row.update(forward_s=_bench.median(times[k]), rounds=len(times[k]),
                           img_per_s=ROWS / _bench.median(times[k]), max_rel_diff=_rel(mod(xin), ref),
                           max_rel_diff_other_batch=_rel(mod(to_input(x2, lev)), ref2))
            res["variants"][k] = row
    return res


# --------------------------------------------------------------------------- decisions


def decide(res: dict) -> dict:
    """Which levers pay for one backbone (see the module docstring): the best of the four
    variants when the run freezes, the better of plain and channels_last when it does not."""
    v = res["variants"]

    def ips(k) -> float:  # 0 for a variant that failed or left the tolerance
        r = v.get(k) or {}
        good = (not r.get("error") and r.get("img_per_s") is not None
                and max(r["max_rel_diff"], r["max_rel_diff_other_batch"]) <= TOLERANCE)
        return r["img_per_s"] if good else 0.0

    if not ips("plain"):
        return {"measured": False, "channels_last": False, "freeze": False}
    cl = ips("cl") >= ips("plain")
    unfrozen = "cl" if cl else "plain"
    frozen = "cl_freeze" if ips("cl_freeze") > ips("freeze") else "freeze"
    fr = ips(frozen) > 0 and ips(frozen) >= ips(unfrozen)
    best = frozen if fr else unfrozen
    ort = ips("onnxruntime") > 0 and ips("onnxruntime") >= ips(best)
    torch_best, best = best, "onnxruntime" if ort else best
    return {"measured": True, "channels_last": cl, "freeze": fr, "channels_last_frozen": fr and frozen == "cl_freeze",
            "onnxruntime": ort, "best": best, "best_vs_plain": ips(best) / ips("plain"),
            "cl_vs_plain": ips("cl") / ips("plain") if ips("cl") else None,
            "onnxruntime_min_images": onnx_break_even(v, res["size"], torch_best, ips) if ort else None}


def onnx_break_even(v: dict, size: int, torch_best: str, ips) -> int:
    """The fewest images at 224 px for which ONNX Runtime's extra set-up over ``torch_best`` (the
    best of the four torch variants) is repaid by its faster forward, on this row's numbers:
    extra set-up seconds / seconds saved per image, scaled from ``size`` by input pixels, rounded
    up to a multiple of 16, and at least ``FREEZE_MIN_IMAGES`` (below it no run freezes, so the
    torch alternative has no set-up to compare with)."""
    extra = (v["onnxruntime"].get("setup_s") or 0.0) - (v[torch_best].get("setup_s") or 0.0)
    saved = 1.0 / ips(torch_best) - 1.0 / ips("onnxruntime")
    if extra <= 0:
        return FREEZE_MIN_IMAGES
    if saved <= 0:  # a tie: the set-up is never repaid
        return NEVER_REPAID
    images = extra / saved * (size / 224) ** 2
    return max(FREEZE_MIN_IMAGES, 16 * math.ceil(min(images, NEVER_REPAID) / 16))


# --------------------------------------------------------------------------- parent


def backbones(only: str | None) -> list[str]:
    from featcache.extraction.backbones import list_backbones

    names = only.split(",") if only else list_backbones()
    return sorted(names, key=lambda n: (_gflops(n), n))  # cheapest first: a cut-short run covers the most


def _gflops(name: str) -> float:
    """GFLOPs per image of the default weights at their own size (torchvision's metadata; 0.4 if unknown)."""
    from torchvision.models import get_model_weights

    try:
        return float(get_model_weights(name).DEFAULT.meta.get("_ops", 0.4))
    except (ValueError, KeyError, AttributeError):
        return 0.4


def measure_backbones(a, script: str, child_args: list[str], finish, line) -> list[dict]:
    """Each backbone of ``a.only`` not yet in ``a.partial``, measured by ``script --child NAME
    *child_args`` in a fresh process within ``a.timeout_s`` (a failure becomes a row with its
    ``error``); ``finish(row)`` adds what the parent decides, the row is appended to the partial
    file and printed as ``line(row)``. Returns every measured row, in backbone order. With
    ``a.publish``: the partial file's rows, nothing measured. (This script and heap_reuse.py.)"""
    partial = Path(a.partial or Path(os.environ.get("TMPDIR", "/tmp")) / f"featcache-{a.name}.jsonl")
    if a.publish:
        return [json.loads(x) for x in partial.read_text().splitlines()]
    done = {}
    if partial.is_file():
        done = {r["backbone"]: r for r in map(json.loads, partial.read_text().splitlines())}
    for name in backbones(a.only):
        if name in done:
            continue
        t0 = time.perf_counter()
        try:
            r = _bench.run_child([sys.executable, script, "--child", name, *child_args], timeout=a.timeout_s)
            r.pop("memory_samples", None)
        except RuntimeError as e:
            r = {"backbone": name, "error": str(e).splitlines()[0][:300]}
        r["wall_s"] = time.perf_counter() - t0
        finish(r)
        with open(partial, "a") as f:
            f.write(json.dumps(r, default=_bench._json_default) + "\n")
        done[name] = r
        print(f"  {name:22s} {line(r)}", flush=True)
    return [done[n] for n in backbones(a.only) if n in done]


def measure_all(a) -> list[dict]:
    args = ["--size", str(a.size), "--repeats", str(a.repeats), "--budget-s", str(a.budget_s)]
    args += ["--threads", str(a.threads)] if a.threads else []

    def finish(r: dict) -> None:
        r.setdefault("variants", {})
        r["decision"] = decide(r) if r["variants"] else {"measured": False, "channels_last": False, "freeze": False}

    def line(r: dict) -> str:
        d = r["decision"]
        return (f"{r.get('size', '-')!s:>4} px  cl {d.get('cl_vs_plain') or 0:5.2f}x  best "
                f"{d.get('best', '-'):9s} {d.get('best_vs_plain') or 0:5.2f}x  ({r['wall_s']:.0f} s)"
                + (f"  ERROR {r['error']}" if r.get("error") else ""))

    rows = measure_backbones(a, str(Path(__file__).resolve()), args, finish, line)
    if a.publish:  # rows read back from --partial: decided again by today's rule
        for r in rows:
            finish(r)
    return rows


def sets(rows: list[dict]) -> dict:
    measured = [r for r in rows if r["decision"]["measured"]]
    return {"MEASURED": sorted(r["backbone"] for r in measured),
            "LOSES_CHANNELS_LAST": sorted(r["backbone"] for r in measured if not r["decision"]["channels_last"]),
            "LOSES_FREEZE": sorted(r["backbone"] for r in measured if not r["decision"]["freeze"]),
            "LOSES_CHANNELS_LAST_FROZEN": sorted(r["backbone"] for r in measured
                                                 if r["decision"]["freeze"] and not r["decision"]["channels_last_frozen"]),
            "WINS_ONNXRUNTIME": {r["backbone"]: r["decision"]["onnxruntime_min_images"]
                                 for r in sorted(measured, key=lambda r: r["backbone"]) if r["decision"].get("onnxruntime")}}


def table_options(p: argparse.ArgumentParser, *, name: str, timeout_s: float) -> None:
    """The options of a per-backbone table run one fresh child process per backbone (this
    script's and heap_reuse.py's): limit, selection, resumable partial results, output."""
    p.add_argument("--timeout-s", type=float, default=timeout_s, help="per-backbone limit; beyond it: not measured")
    p.add_argument("--only", default=None, help="comma list of backbones (default: all registered)")
    p.add_argument("--partial", default=None, help="one JSON line per measured backbone: an interrupted run "
                   "resumes from it (default: featcache-<--name>.jsonl in $TMPDIR or /tmp)")
    p.add_argument("--quick", action="store_true", help="smoke test: mobilenet_v3_small at 32 px, 1 round")
    p.add_argument("--publish", action="store_true", help="write the table from --partial without measuring")
    p.add_argument("--out", default=str(_bench.RESULTS_DIR))
    p.add_argument("--name", default=name)
    p.add_argument("--child", help=argparse.SUPPRESS)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="input size in px (default 64; 0: each backbone's own "
                   "size, e.g. 224)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds over the five variants (median)")
    p.add_argument("--budget-s", type=float, default=60.0, help="stop adding rounds after this many seconds")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each child (default: torch's "
                   "own, one per core; 1 keeps a shared machine's scheduling out of the comparison)")
    table_options(p, name="levers_all", timeout_s=600.0)
    a = p.parse_args(argv)
    if a.quick:
        a.only, a.size, a.repeats = a.only or "mobilenet_v3_small", 32, 1
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    if a.child:
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        res = child(a)
        print(json.dumps(res, default=_bench._json_default))
        return res
    info = _bench.machine_info("cpu")
    print(f"lever_table: {len(backbones(a.only))} backbones at {a.size} px, batch {ROWS}; "
          f"machine: {_bench.describe_machine(info)}", flush=True)
    rows = measure_all(a)
    from featcache.extraction.levers import cpu_kind

    result = {"benchmark": "lever_table", "command": _bench.command_line(), "cpu_kind": cpu_kind(),
              "settings": {"quick": a.quick, "size": a.size, "threads": a.threads, "rows": ROWS,
                           "other_rows": OTHER_ROWS, "repeats": a.repeats, "tolerance": TOLERANCE, "weights": "none (seeded random init)"},
              "machine": _bench.finish_info(info), "sets": sets(rows), "rows": rows}
    return _bench.publish(result, a.out, a.name, lambda path: plot(result, path), print_report)


def print_report(res: dict) -> None:
    print()
    print(f"== lever_table: {len(res['rows'])} backbones at {res['settings']['size']} px, levers on vs off ==")
    print(_bench.table([{"backbone": r["backbone"], "size": r.get("size"), **{
        f"{k}_ips": (r["variants"].get(k) or {}).get("img_per_s") for k in VARIANTS},
        "setup": (r["variants"].get("cl_freeze") or {}).get("setup_s"),
        "ort_min": r["decision"].get("onnxruntime_min_images"),
        "rel": max([(r["variants"].get(k) or {}).get("max_rel_diff") or 0 for k in VARIANTS]),
        "best": r["decision"].get("best", "-"), "x": r["decision"].get("best_vs_plain")} for r in res["rows"]],
        [("backbone", "backbone"), ("size", "px"), ("plain_ips", "plain img/s", 1), ("cl_ips", "cl", 1),
         ("freeze_ips", "freeze", 1), ("cl_freeze_ips", "cl+freeze", 1), ("onnxruntime_ips", "onnxruntime", 1),
         ("setup", "freeze set-up s", 1), ("ort_min", "onnxruntime from images"),
         ("rel", "max rel diff", 7), ("best", "chosen"), ("x", "chosen / plain", 2)]))
    print(f"the {res.get('cpu_kind')} table of featcache/extraction/lever_tables.py:")
    for k, v in res["sets"].items():
        print(f"{k} = {v!r}" if isinstance(v, dict) else f"{k} = frozenset({v!r})")


def plot(res: dict, path: Path) -> None:
    rows = [r for r in res["rows"] if r["decision"].get("measured")]
    fig = _bench.new_figure(max(8.0, 0.16 * len(rows)), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["decision"].get("cl_vs_plain") or 0 for r in rows], 0.4, label="channels_last")
    ax.bar([x + 0.2 for x in xs], [r["decision"]["best_vs_plain"] for r in rows], 0.4, label="chosen levers")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["backbone"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("forward speed / plain eager")
    ax.set_title(f"inference levers at {res['settings']['size']} px, batch {res['settings']['rows']}, "
                 f"{res['machine']['cpu_model']} x{res['machine']['usable_cores']}", fontsize=9)
    ax.legend(fontsize=7)
    _bench.save_figure(fig, path)


if __name__ == "__main__":
    main()
