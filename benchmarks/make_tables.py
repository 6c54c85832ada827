#!/usr/bin/env python3
"""Print Markdown tables of the results in ``benchmarks/results/*.json`` (for README.md).

    python benchmarks/make_tables.py [--results DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402


def header(res: dict) -> str:
    m = res["machine"]
    la0, la1 = m.get("loadavg_start") or [None], m.get("loadavg_end") or [None]
    return (f"`{res['command']}` — {m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']} "
            f"({m['torch_threads']} threads){', GPU ' + m['gpu'] if m.get('gpu') else ', no GPU'}; "
            f"1-min load average {la0[0]:.1f} at start, {la1[0]:.1f} at end")


def compare_heads(res: dict) -> str:
    st, ex = res["settings"], res["extraction"]
    lines = [header(res), "",
             f"{st['data']} ({ex['rows']:,} images) -> {st['backbone']} weights `{st['weights']}`"
             f"{'' if st['pretrained'] else ' (random init: not pretrained)'} at {st['image_size']} px, "
             f"{ex['dim']}-d; cold extraction {ex['wall_s']:.2f} s (median of {st['repeats']}).", ""]
    lines.append(_bench.table(res["rows"], [
        ("head", "head"), ("n_combos", "grid points"), ("test_accuracy", "test acc"),
        ("balanced_accuracy", "balanced acc"), ("macro_f1", "macro-F1"), ("fit_s", "fit s", 2),
        ("predict_s", "predict s", 3), ("fit_over_extract", "fit / extract", 3), ("goal", "goal", 2),
        ("verdict", "verdict"), ("sweep_fit_seconds_sum", "sum of the fits s", 2),
        ("sweep_overhead_s", "sweep overhead s", 2)], markdown=True))
    return "\n".join(lines)


def extract_throughput(res: dict) -> str:
    s, st = res["summary"], res["settings"]
    lines = [header(res), "",
             f"{st['backbone']} weights `{st['weights']}` at {st['image_size']} px, batch {st['batch_size']}, "
             f"{st['source_images']} (~{st['bytes_per_image'] / 1024:.1f} KiB each); median of {st['repeats']} "
             "repeats, each configuration in a fresh process.", ""]
    lines.append(_bench.table(s["rows"], [
        ("method", "method"), ("n", "images"), ("img_per_s", "img/s", 1), ("wall_s", "wall s", 2),
        ("tree_peak_rss_mb", "tree peak RSS MB", 0), ("self_vmhwm_mb", "main VmHWM MB", 0)], markdown=True))
    p = s["ours_profile_median_s"]
    g = s["rss_growth_mb"]
    lines += ["", "| measure | value | goal | verdict |", "| --- | --- | --- | --- |",
              f"| efficiency ours / model at {s['n_max']:,} | {_bench.fmt(s['efficiency_median'])} "
              f"(per repeat {', '.join(f'{e:.2f}' for e in s['efficiency_per_repeat'])}) | >= {s['efficiency_goal']} "
              f"| {s['efficiency_verdict']} |",
              f"| speed-up over the tutorial way | {_bench.fmt(s['speedup_vs_tutorial_median'], 2)}x | - | - |",
              f"| tree peak RSS growth {s['n_min']:,} -> {s['n_max']:,}, ours | {_bench.fmt(g['ours'], 0)} MB | "
              f"<= {s['rss_growth_goal_mb']:.0f} MB | {s['rss_growth_verdict']} |",
              f"| same, tutorial way | {_bench.fmt(g['tutorial'], 0)} MB | - | - |", "",
              "Profile of ours (median seconds): " + ", ".join(
                  f"{k[:-2]} {p[k]:.2f}" for k in ("digest_s", "build_s", "decode_s", "wait_s", "forward_s",
                                                   "write_s", "view_s", "total_s") if p.get(k) is not None)
              + (f"; forward inside extract = {p['forward_slowdown_inside_extract']:.2f}x the model-only forward "
                 "time for the same images" if p.get("forward_slowdown_inside_extract") else "")]
    return "\n".join(lines)


def cache_reuse(res: dict) -> str:
    st = res["settings"]
    lines = [header(res), "",
             f"{st['images']:,} + {st['added']:,} images ({st['source_images']}) -> {st['backbone']} weights "
             f"`{st['weights']}` at {st['image_size']} px; median of {st['repeats']}.", ""]
    lines.append(_bench.table(res["rows"], [
        ("step", "step"), ("images", "images"), ("s", "seconds", 3), ("vs_cold", "x cold", 3),
        ("model_built", "model built"), ("goal", "goal"), ("verdict", "verdict")], markdown=True))
    return "\n".join(lines)


def scale(res: dict) -> str:
    st, ex = res["settings"], res["extraction"]
    lines = [header(res), "",
             f"{st['data']} {st['rows']:,} rows -> {st['backbone']} weights `{st['weights']}` at "
             f"{st['image_size']} px, batch {st['batch_size']}"
             f"{'' if res.get('complete', True) else ' (INCOMPLETE run: the heads listed are those finished)'}.", ""]
    lines.append(_bench.table([ex], [
        ("rows", "rows"), ("dim", "dim"), ("wall_s", "extract s", 1), ("img_per_s", "img/s", 1),
        ("peak_tree_rss_mb", "peak tree RSS MB", 0), ("store_rows_bytes_per_row", "row shards B/row", 0),
        ("store_view_bytes_per_row", "view B/row", 0), ("raw_feature_bytes_per_row", "float32 B/row", 0)],
        markdown=True))
    rows = list(res["heads"]) + ([res["raw_pixels"]] if res.get("raw_pixels") else [])
    lines += ["", _bench.table(rows, [
        ("head", "head"), ("features", "features"), ("test_accuracy", "test acc", 4),
        ("balanced_accuracy", "balanced acc", 4), ("macro_f1", "macro-F1", 4), ("fit_s", "fit s", 1),
        ("predict_s", "predict s", 2), ("peak_tree_rss_mb", "peak RSS MB", 0),
        ("published_raw_pixel_accuracy", "published raw-pixel acc", 2)], markdown=True)]
    return "\n".join(lines)


def cli_latency(res: dict) -> str:
    st = res["settings"]
    lines = [header(res), "",
             f"{st['data']} -> {st['backbone']} weights `{st.get('weights', 'DEFAULT')}`, all cached; fresh processes, "
             f"median of {st['repeats']} (ratios taken within each repeat).", ""]
    lines.append(_bench.table(res["rows"], [
        ("command", "command"), ("wall_s", "wall s", 2), ("floor", "floor"), ("ratio", "x floor", 2),
        ("goal", "goal", 1), ("verdict", "verdict")], markdown=True))
    return "\n".join(lines)


RENDER = {"compare_heads": compare_heads, "extract_throughput": extract_throughput, "cache_reuse": cache_reuse,
          "scale": scale, "cli_latency": cli_latency}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(_bench.RESULTS_DIR))
    a = p.parse_args(argv)
    for path in sorted(Path(a.results).glob("*.json")):
        res = json.loads(path.read_text())
        render = RENDER.get(res.get("benchmark"))
        if render:
            print(f"### {path.name}\n\n{render(res)}\n")


if __name__ == "__main__":
    main()
