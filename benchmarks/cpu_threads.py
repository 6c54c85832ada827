#!/usr/bin/env python3
"""Profile behind a recommended library change: decode workers x torch threads on a small CPU.

``featcache.extract`` on CPU runs ``default_workers()`` DataLoader decode workers
(2 on a 2-core machine) next to a main process whose torch uses one intra-op thread
per core (2): four busy threads on two cores. This script runs the same extraction
(and the model alone, for reference) with several (workers, torch threads) settings,
each in a fresh process (the children of ``extract_throughput.py``), interleaved
within each repeat, and reports median images/s and efficiency against the model
alone with the default threads measured in the same repeat.

Default: 2,000 of extract_throughput's 256x256 JPEG files, resnet18 (seeded random
weights) at 64 px, batch 64, settings 2x2 (featcache's default here), 1x2, 2x1, 1x1,
3 repeats.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

HERE = Path(__file__).resolve().parent


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default="none")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--settings", default="2x2,1x2,2x1,1x1", help="comma list of WORKERSxTHREADS")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="60 images at 16 px, settings 2x2,1x1, 1 repeat")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(_bench.RESULTS_DIR))
    p.add_argument("--name", default="cpu_threads")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.image_size, a.settings, a.repeats = 60, 16, "2x2,1x1", 1
    return a


def child(a, method: str, folder: Path, workers: int | None, threads: int | None) -> list[str]:
    cmd = [sys.executable, str(HERE / "extract_throughput.py"), "--child", method, "--folder", str(folder),
           "--n", str(a.images), "--backbone", a.backbone, "--weights", a.weights, "--batch-size",
           str(a.batch_size), "--device", "cpu", "--precision", "float32", "--image-size", str(a.image_size)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if threads is not None:
        cmd += ["--torch-threads", str(threads)]
    return cmd


def main(argv=None) -> dict:
    a = parse(argv)
    info = _bench.machine_info("cpu")
    source = 64 if a.quick else 256
    pool = _bench.image_pool(max(a.images, 4000) if not a.quick else a.images, size=source, fmt="jpeg",
                             data_dir=a.data_dir)
    files = _bench.pool_files(pool)[:a.images]
    work = Path(tempfile.mkdtemp(prefix="featcache-bench-threads-"))
    folder = _bench.link_subset(pool, work / "data", files)
    settings = [tuple(int(x) for x in s.split("x")) for s in a.settings.split(",")]
    print(f"cpu_threads: {a.images} JPEG {source}x{source} -> {a.backbone} ({a.weights}) at {a.image_size} px, "
          f"batch {a.batch_size}; settings workers x threads {settings}; {a.repeats} repeats", flush=True)
    print(f"machine: {_bench.describe_machine(info)}", flush=True)
    runs = []
    try:
        for rep in range(a.repeats):
            plan = [("model", None, None)] + [("ours", w, t) for w, t in settings]
            plan = plan[rep % len(plan):] + plan[:rep % len(plan)]
            for method, w, t in plan:
                res = _bench.run_child(child(a, method, folder, w, t))
                res.update(repeat=rep, setting="model (default threads)" if method == "model" else f"{w}x{t}",
                           workers=w, threads=t)
                runs.append(res)
                print(f"  repeat {rep + 1}/{a.repeats} {res['setting']:24s} {res['img_per_s']:7.1f} img/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for s in ["model (default threads)"] + [f"{w}x{t}" for w, t in settings]:
        rs = [r for r in runs if r["setting"] == s]
        eff = []
        for r in rs:
            m = next((x for x in runs if x["repeat"] == r["repeat"] and x["method"] == "model"), None)
            if m:
                eff.append(r["img_per_s"] / m["img_per_s"])
        t = {k: _bench.median(r["timings"].get(k) for r in rs) for k in ("decode_s", "wait_s", "forward_s", "total_s")}
        rows.append({"setting": s, "img_per_s": _bench.median(r["img_per_s"] for r in rs),
                     "efficiency": _bench.median(eff), "forward_s": t["forward_s"], "wait_s": t["wait_s"],
                     "decode_s": t["decode_s"], "total_s": t["total_s"]})
    result = {"benchmark": "cpu_threads", "command": _bench.command_line(),
              "settings": {"images": a.images, "image_size": a.image_size, "backbone": a.backbone,
                           "weights": a.weights, "batch_size": a.batch_size, "settings": a.settings,
                           "repeats": a.repeats, "quick": a.quick, "source": f"{source}x{source} JPEG"},
              "machine": _bench.finish_info(info), "rows": rows, "runs": runs}
    out = Path(a.out)
    _bench.atomic_write_json(out / f"{a.name}.json", result)
    fig = _bench.new_figure(7.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([r["setting"] for r in rows], [r["img_per_s"] or 0 for r in rows],
           color=["#999999"] + ["#1f77b4"] * (len(rows) - 1))
    ax.set_ylabel("images / s (median)")
    ax.set_xlabel("workers x torch threads (ours) ")
    ax.set_title(f"extract on CPU: {a.images} images, {a.backbone} {a.image_size} px, "
                 f"{info['cpu_model']} x{info['usable_cores']}", fontsize=9)
    _bench.save_figure(fig, out / f"{a.name}.png")
    print()
    print(f"== cpu_threads: median of {a.repeats} ==")
    print(_bench.table(rows, [("setting", "workers x threads"), ("img_per_s", "img/s", 1),
                              ("efficiency", "vs model", 3), ("forward_s", "forward s", 2), ("wait_s", "wait s", 2),
                              ("decode_s", "decode s (workers)", 2), ("total_s", "total s", 2)]))
    print(f"wrote {out / (a.name + '.json')} and {out / (a.name + '.png')}")
    return result


if __name__ == "__main__":
    main()
