#!/usr/bin/env python3
"""Stage-one throughput: featcache's extract path vs the model alone vs the tutorial way.

Three ways to turn N image files into stored features with the same model, batch
size, device and preprocessing:

* ``ours``     ``featcache.extract(folder)`` into a fresh, empty cache: listing, content
               digests, model build, DataLoader decode workers, forward, writer thread,
               view file. Files on disk -> features in the store.
* ``model``    the ceiling: the same FeatureExtractor on preprocessed batches that are
               already in memory (real images of the set, decoded once before timing),
               forward only.
* ``tutorial`` the seed tutorials' way: decode and preprocess every image into one
               in-memory tensor first (one process, no workers), then run the batches,
               then save the features with h5py.

Every configuration runs in a fresh subprocess. Peak memory is measured by this
(parent) process sampling the child's process tree from /proc every 50 ms: the
sum of VmRSS over the child and all its descendants (DataLoader workers included;
shared pages counted once per process, so an upper bound), and the sum of PSS.
The child also reports its own VmHWM and the largest reaped child's ru_maxrss
(getrusage RUSAGE_CHILDREN), for cross-checking.

Efficiency = ours img/s / model img/s and speed-up = ours / tutorial are computed
per repeat (the runs of one repeat are back to back) and reported as medians.

``--cpu-section`` (issue 12): resnet18, resnet50, efficientnet_b0 and efficientnet_lite0 at
their native 224 px on photo-like JPEG files of 500x375 and 4000x3000 (12 megapixels;
benchmarks/_photos.py), per backbone and photo set, in fresh processes, repeats outermost:

* ``ours``     ``featcache.extract`` with its default ``--compute auto`` (the levers the rule picks);
* ``levers``   model only, on the same decoded batches, round-robin: the plain eager forward and
               the forward with the levers the rule picks for that many images (freed memory kept
               for reuse, as extract does: featcache.allocator), plus the max
               relative difference of their features;
* ``tutorial`` as above (plain eager).

It also measures, once per photo set, the per-image cost of decoding + preprocessing on one
core, full PIL decode vs ``--decode draft``, and whether draft's pixels are the same.
Ratios are taken per repeat (ours / plain model, ours / tutorial, levers / plain) and
reported as medians; results in ``results/extract_throughput_cpu.json``.

Fast default (2 CPU cores, a few minutes): resnet18 with seeded random weights
(--weights none: ImageNet weights cannot be downloaded here; the speed is the
same), 256x256 JPEG files resized to 64 px, batch 64, 400 and 4,000 images, 3
repeats. ``--full`` (GPU machine): resnet50 at its native 224 px in bfloat16,
batch 128, 400 / 4,000 / 20,000 images, 5 repeats.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402
import _photos  # noqa: E402

GOAL_EFF_CPU, GOAL_EFF_GPU, GOAL_RSS_GROWTH_MB = 0.80, 0.90, 100.0


# --------------------------------------------------------------------------- children


def _model_and_transform(a):
    import torch

    from featcache.devices import resolve_device
    from featcache.extraction.engine import ident_transform
    from featcache.extraction.identity import resolve_identity
    from featcache.extraction.layers import FeatureExtractor
    from featcache.specs import BackboneSpec

    dev = resolve_device(a.device)
    ident, entry, choice = resolve_identity(BackboneSpec(a.backbone, weights=a.weights, image_size=a.image_size,
                                                         precision=a.precision), device=dev)
    prec = ident.precision
    model = FeatureExtractor(entry.build(choice)).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, ident_transform(ident), dev, prec


def _forward(model, x, dev, prec):
    import torch

    from featcache.extraction.engine import autocast

    x = x.to(dev, non_blocking=True)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(dev, prec):
        return model(x).float().cpu().numpy()


def child_ours(a) -> dict:
    from featcache.extraction.engine import extract

    cache = tempfile.mkdtemp(prefix="featcache-bench-cache-")
    try:
        t0 = time.perf_counter()
        r = extract(a.folder, backbone=a.backbone, weights=a.weights, image_size=a.image_size,
                    batch_size=a.batch_size, workers=a.workers, device=a.device, precision=a.precision,
                    decode=a.decode, compute=a.compute, cache_dir=cache)
        wall = time.perf_counter() - t0
        assert r.extracted == a.n and not r.cache_hit, (r.extracted, a.n, r.cache_hit)
        return {"method": "ours", "n": a.n, "wall_s": wall, "img_per_s": a.n / wall, "timings": r.timings,
                "device": r.device, "feature_key": r.feature_key, "dim": r.dim,
                "workers": a.workers if a.workers is not None else _default_workers(),
                "store_bytes": _bench.folder_bytes(cache), "levers": r.levers}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _default_workers() -> int:
    from featcache.extraction.engine import default_workers

    return default_workers()


def child_tutorial(a) -> dict:
    import h5py
    import numpy as np
    import torch

    from featcache.extraction.images import IMAGE_EXTENSIONS, decode_image

    out_dir = tempfile.mkdtemp(prefix="featcache-bench-tutorial-")
    try:
        t0 = time.perf_counter()
        root = Path(a.folder)
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        classes = sorted({p.parent.name for p in paths})
        labels = np.array([classes.index(p.parent.name) for p in paths], dtype=np.int64)
        model, tf, dev, prec = _model_and_transform(a)
        t1 = time.perf_counter()
        images = torch.stack([tf(decode_image(str(p))) for p in paths])  # the whole data set in memory
        t2 = time.perf_counter()
        feats = []
        with torch.inference_mode():
            for i in range(0, len(images), a.batch_size):
                feats.append(_forward(model, images[i:i + a.batch_size], dev, prec))
        features = np.concatenate(feats)
        t3 = time.perf_counter()
        with h5py.File(Path(out_dir) / "features.h5", "w") as f:
            f.create_dataset("features", data=features)
            f.create_dataset("labels", data=labels)
        t4 = time.perf_counter()
        assert len(features) == a.n, (len(features), a.n)
        return {"method": "tutorial", "n": a.n, "wall_s": t4 - t0, "img_per_s": a.n / (t4 - t0),
                "timings": {"setup_s": t1 - t0, "decode_s": t2 - t1, "forward_s": t3 - t2, "write_s": t4 - t3},
                "images_tensor_mb": images.numel() * images.element_size() / _bench.MB}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def child_model(a) -> dict:
    import torch

    from featcache.extraction.images import IMAGE_EXTENSIONS, decode_image

    model, tf, dev, prec = _model_and_transform(a)
    paths = sorted(p for p in Path(a.folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    k = min(len(paths), 4 * a.batch_size)
    batches = [torch.stack([tf(decode_image(str(p))) for p in paths[i:i + a.batch_size]])
               for i in range(0, k, a.batch_size)]
    if dev.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    with torch.inference_mode():
        _forward(model, batches[0], dev, prec)  # warm-up (kernel selection), not timed
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        done, j = 0, 0
        while done < a.n:
            b = batches[j % len(batches)]
            take = min(len(b), a.n - done)
            _forward(model, b[:take], dev, prec)  # .cpu() in _forward synchronises
            done += take
            j += 1
        wall = time.perf_counter() - t0
    return {"method": "model", "n": a.n, "wall_s": wall, "img_per_s": a.n / wall,
            "timings": {"forward_s": wall}, "distinct_images_cycled": k}


def child_levers(a) -> dict:
    """Model only, plain eager vs the levers the rule picks for ``a.n`` images, round-robin on the same
    decoded batches; plus the max relative difference of their features."""
    import copy

    import torch

    from featcache import allocator, devices
    from featcache.extraction import levers
    from featcache.extraction.images import IMAGE_EXTENSIONS, decode_image

    model, tf, dev, prec = _model_and_transform(a)
    paths = sorted(p for p in Path(a.folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    k = min(len(paths), 2 * a.batch_size)
    batches = [torch.stack([tf(decode_image(str(p))) for p in paths[i:i + a.batch_size]])
               for i in range(0, k, a.batch_size)]
    crop = batches[0].shape[-1]
    chosen = levers.choose(a.backbone, dev, compute=a.compute, precision=prec, images=a.n, pixels=crop * crop)
    fast, setup_s = levers.prepare_timed(copy.deepcopy(model), chosen, levers.to_input(batches[0][:levers.TRACE_ROWS], chosen))
    # the levers' forward keeps freed memory for reuse as extract's does (featcache.allocator); plain does not
    heap = levers.keeps_freed_memory(dev, a.compute)
    ways = {"plain": (model, levers.PLAIN, False), "levers": (fast, chosen, heap)}
    secs: dict = {w: [] for w in ways}
    outs: dict = {}
    with torch.inference_mode():
        model(batches[0])  # warm-up (kernel selection), not timed
        for _ in range(a.rounds):
            for w, (m, lev, keep) in ways.items():
                with allocator.keep_freed_memory(keep):
                    t0 = time.perf_counter()
                    outs[w] = torch.cat([m(levers.to_input(b, lev)) for b in batches])
                    secs[w].append(time.perf_counter() - t0)
    ref = outs["plain"]
    rel = float((outs["levers"] - ref).abs().max() / ref.abs().max())
    rate = {w: k / _bench.median(s) for w, s in secs.items()}
    return {"method": "levers", "n": a.n, "images_cycled": k, "rounds": a.rounds, "levers": chosen.describe(),
            "setup_s": setup_s, "plain_img_per_s": rate["plain"], "levers_img_per_s": rate["levers"], "heap_reuse": heap,
            "img_per_s": rate["levers"], "wall_s": k / rate["levers"], "max_rel_diff": rel,
            "cpu_bf16_native": devices.cpu_bf16_native()}


def child_decode(a) -> dict:
    """Per-image decode + preprocess cost on one core, full PIL decode vs ``--decode draft``, and how far
    draft's pixels land from the full decode's (after the same resize, crop and normalisation)."""
    import torch

    from featcache.extraction.images import IMAGE_EXTENSIONS, decode_image

    _, tf, _, _ = _model_and_transform(a)
    resize = tf.resize_size[0]
    paths = sorted(p for p in Path(a.folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:a.n]
    secs: dict = {"full": [], "draft": []}
    diff = 0.0
    for p in paths:
        out = {}
        for way, draft in (("full", None), ("draft", resize)):
            t0 = time.perf_counter()
            out[way] = tf(decode_image(str(p), draft=draft))
            secs[way].append(time.perf_counter() - t0)
        diff = max(diff, float((out["full"] - out["draft"]).abs().max()))
    return {"method": "decode", "n": len(paths), "img_per_s": 1 / _bench.median(secs["full"]),
            "full_ms": 1e3 * _bench.median(secs["full"]), "draft_ms": 1e3 * _bench.median(secs["draft"]),
            "draft_max_abs_diff_normalised": diff, "draft_same_pixels": diff == 0.0, "torch_threads":
            torch.get_num_threads()}


CHILDREN = {"ours": child_ours, "tutorial": child_tutorial, "model": child_model, "levers": child_levers,
            "decode": child_decode}


# --------------------------------------------------------------------------- parent


def child_cmd(a, method: str, folder: Path, n: int) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--folder", str(folder), "--n", str(n),
           "--backbone", a.backbone, "--weights", a.weights, "--batch-size", str(a.batch_size),
           "--device", a.device, "--precision", a.precision, "--decode", a.decode, "--compute", a.compute,
           "--rounds", str(a.rounds)]
    if a.image_size:
        cmd += ["--image-size", str(a.image_size)]
    if a.workers is not None:
        cmd += ["--workers", str(a.workers)]
    if a.torch_threads is not None:
        cmd += ["--torch-threads", str(a.torch_threads)]
    return cmd


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="GPU settings: resnet50, native 224 px, bf16, batch 128, "
                   "400/4000/20000 images, 5 repeats")
    p.add_argument("--quick", action="store_true", help="smoke-test settings: 16 px, 20/60 images, 1 repeat")
    p.add_argument("--backbone", default=None, help="default resnet18 (resnet50 with --full)")
    p.add_argument("--weights", default=None, help="default none = seeded random init (speed is the same); "
                   "DEFAULT where the weights are available")
    p.add_argument("--image-size", type=int, default=None, help="model input size in px (default 64; "
                   "--full: the weights' own 224)")
    p.add_argument("--source-size", type=int, default=256, help="size of the generated JPEG files (px)")
    p.add_argument("--format", default="jpeg", choices=["jpeg", "png"])
    p.add_argument("--sizes", default=None, help="comma list of data set sizes (default 400,4000)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (128 with --full)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers of ours (default: featcache's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--decode", default="workers", choices=["workers", "draft", "device"],
                   help="how ours decodes JPEG files: see `featcache extract --help` (the model-only and "
                        "tutorial ways always decode fully with PIL)")
    p.add_argument("--compute", default="auto", choices=["auto", "plain"], help="ours' --compute (CPU levers)")
    p.add_argument("--cpu-section", action="store_true", help="the CPU section: --backbones at their native "
                   "size on --photos (photo-like JPEG files), ours vs plain and levered model-only vs tutorial")
    p.add_argument("--backbones", default="resnet18,resnet50,efficientnet_b0,efficientnet_lite0",
                   help="--cpu-section: comma list of backbones")
    p.add_argument("--photos", default="500x375:120,4000x3000:64",
                   help="--cpu-section: comma list of WIDTHxHEIGHT:IMAGES photo sets")
    p.add_argument("--from-partial", default=None, help="--cpu-section: publish the runs of a cut-short run "
                   "(its JSON file) instead of measuring")
    p.add_argument("--rounds", type=int, default=3, help="model-only rounds per child of the levers method")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads of the main process "
                   "in every method (default: torch's own choice, one per core)")
    p.add_argument("--repeats", type=int, default=None, help="default 3 (5 with --full, 1 with --quick)")
    p.add_argument("--data-dir", default=None, help=f"where generated images are kept (default "
                   f"{_bench.DEFAULT_DATA_DIR})")
    p.add_argument("--out", default=str(_bench.RESULTS_DIR), help="folder for the JSON and PNG results")
    p.add_argument("--name", default="extract_throughput", help="base name of the result files")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return a
    full, quick = a.full, a.quick
    a.backbone = a.backbone or ("resnet50" if full else "resnet18")
    a.weights = a.weights or ("DEFAULT" if a.backbone == "efficientnet_lite0" else "none")
    if a.cpu_section:
        if a.quick:
            a.backbones, a.photos, a.rounds = "resnet18", "160x120:16", 1
        a.batch_size, a.repeats = a.batch_size or (16 if a.quick else 32), a.repeats or (1 if a.quick else 3)
        a.name = "extract_throughput_cpu" if a.name == "extract_throughput" else a.name
        return a
    if a.image_size is None and not full:
        a.image_size = 16 if quick else 64
    a.batch_size = a.batch_size or (128 if full else 32 if quick else 64)
    a.repeats = a.repeats or (5 if full else 1 if quick else 3)
    a.sizes = [int(s) for s in (a.sizes or ("400,4000,20000" if full else "20,60" if quick else "400,4000")).split(",")]
    if quick:
        a.source_size = min(a.source_size, 64)
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    if a.cpu_section and not a.child:
        return cpu_section(a)
    if a.child:
        import_s = _bench.warm_imports()
        if a.torch_threads is not None:
            import torch

            torch.set_num_threads(a.torch_threads)
        res = CHILDREN[a.child](a)
        res["import_s"] = import_s
        res.update(_bench.child_memory_report())
        print(json.dumps(res, default=_bench._json_default))
        return res

    info = _bench.machine_info(a.device)
    n_max = max(a.sizes)
    t_gen = time.perf_counter()
    pool = _bench.image_pool(n_max, size=a.source_size, fmt=a.format, data_dir=a.data_dir)
    files = _bench.pool_files(pool)
    work = Path(tempfile.mkdtemp(prefix="featcache-bench-throughput-"))
    folders = {}
    for n in a.sizes:
        folders[n] = pool if n == n_max else _bench.link_subset(pool, work / f"n{n}", files[:n])
    gen_s = time.perf_counter() - t_gen
    image_bytes = _bench.folder_bytes(pool) / n_max
    print(f"extract_throughput: {a.backbone} (weights {a.weights}) at {a.image_size or 'native'} px, batch "
          f"{a.batch_size}, {a.format.upper()} files {a.source_size}x{a.source_size} (~{image_bytes / 1024:.1f} KiB "
          f"each), sizes {a.sizes}, {a.repeats} repeats", flush=True)
    print(f"machine: {_bench.describe_machine(info)}", flush=True)

    runs: list[dict] = []
    try:
        for rep in range(a.repeats):
            order = ["model", "ours", "tutorial"]
            order = order[rep % 3:] + order[:rep % 3]  # rotate: no method always runs first
            plan = [(m, n_max) for m in order] + [(m, n) for n in sorted(a.sizes) if n != n_max
                                                    for m in ("ours", "tutorial")]
            for method, n in plan:
                res = _bench.run_child(child_cmd(a, method, folders[n], n))
                res["repeat"] = rep
                runs.append(res)
                print(f"  repeat {rep + 1}/{a.repeats} {method:8s} n={n:6d}: {res['img_per_s']:8.1f} img/s, "
                      f"tree peak RSS {res['tree_peak_rss_mb']:7.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = summarise(a, runs, n_max)
    result = {
        "benchmark": "extract_throughput",
        "command": _bench.command_line(),
        "settings": {"backbone": a.backbone, "weights": a.weights, "image_size": a.image_size or "native",
                     "source_images": f"{a.source_size}x{a.source_size} {a.format.upper()}, generated shapes",
                     "bytes_per_image": image_bytes, "batch_size": a.batch_size, "workers": a.workers,
                     "device": a.device, "precision": a.precision, "decode": a.decode,
                     "torch_threads": a.torch_threads, "sizes": a.sizes, "repeats": a.repeats,
                     "full": a.full, "quick": a.quick, "generate_s": gen_s},
        "memory_method": ("tree_peak_rss_mb = max over 50 ms samples of the sum of VmRSS (/proc/PID/status) of the "
                          "child process and all its descendants (DataLoader workers); each configuration in a "
                          "fresh subprocess; shared pages (torch libraries mapped by every worker) are counted once "
                          "per process, so it is an upper bound. self_vmhwm_mb: the child's own VmHWM "
                          "(/proc/self/status, exact peak of the main process). worker_maxrss_mb: "
                          "getrusage(RUSAGE_CHILDREN).ru_maxrss in the child = peak RSS of its largest reaped "
                          "DataLoader worker."),
        "machine": _bench.finish_info(info),
        "summary": summary,
        "runs": runs,
    }
    return _bench.publish(result, a.out, a.name, lambda path: plot(result, path), print_report)


def summarise(a, runs: list[dict], n_max: int) -> dict:
    gpu = any(r.get("device", "").startswith("cuda") for r in runs) or (a.device.startswith("cuda"))
    by = {}
    for r in runs:
        by.setdefault((r["method"], r["n"]), []).append(r)
    eff, speedup = [], []
    for rep in range(a.repeats):
        pick = {m: next((r for r in runs if r["repeat"] == rep and r["method"] == m and r["n"] == n_max), None)
                for m in ("model", "ours", "tutorial")}
        if pick["model"] and pick["ours"]:
            eff.append(pick["ours"]["img_per_s"] / pick["model"]["img_per_s"])
        if pick["tutorial"] and pick["ours"]:
            speedup.append(pick["ours"]["img_per_s"] / pick["tutorial"]["img_per_s"])
    rows = []
    for (m, n), rs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = {"method": m, "n": n, "img_per_s": _bench.median(r["img_per_s"] for r in rs),
               "img_per_s_range": _bench.spread(r["img_per_s"] for r in rs),
               "wall_s": _bench.median(r["wall_s"] for r in rs),
               "tree_peak_rss_mb": _bench.median(r["tree_peak_rss_mb"] for r in rs),
               "self_vmhwm_mb": _bench.median(r.get("self_vmhwm_mb") for r in rs),
               "worker_maxrss_mb": _bench.median(r.get("largest_reaped_child_maxrss_mb") for r in rs)}
        keys = set().union(*(r.get("timings", {}).keys() for r in rs))
        row["timings_median"] = {k: _bench.median(r["timings"].get(k) for r in rs) for k in sorted(keys)}
        rows.append(row)
    goal_eff = GOAL_EFF_GPU if gpu else GOAL_EFF_CPU
    eff_med = _bench.median(eff)
    n_min = min(a.sizes)

    def med(m, n, k="tree_peak_rss_mb"):
        return _bench.median(r[k] for r in by.get((m, n), []))

    growth = {m: (med(m, n_max) - med(m, n_min)) if med(m, n_max) is not None and med(m, n_min) is not None
              else None for m in ("ours", "tutorial")}
    growth_main = {m: (med(m, n_max, "self_vmhwm_mb") - med(m, n_min, "self_vmhwm_mb"))
                   if med(m, n_max) is not None and med(m, n_min) is not None else None for m in ("ours", "tutorial")}
    ours_t = next((r["timings_median"] for r in rows if r["method"] == "ours" and r["n"] == n_max), {})
    total = ours_t.get("total_s") or 0.0
    profile = {k: ours_t.get(k) for k in ("digest_s", "build_s", "decode_s", "device_decode_s", "wait_s", "forward_s",
                                          "write_s", "view_s", "extract_s", "total_s")}
    profile["forward_share_of_total"] = (ours_t.get("forward_s") or 0) / total if total else None
    profile["wait_share_of_total"] = (ours_t.get("wait_s") or 0) / total if total else None
    profile["outside_loop_share"] = (total - (ours_t.get("extract_s") or 0)) / total if total else None
    model_row = next((r for r in rows if r["method"] == "model"), None)
    if model_row and total:
        # forward time the model alone would need for these images, vs the forward time measured inside extract
        profile["forward_slowdown_inside_extract"] = (ours_t.get("forward_s") or 0) / (n_max / model_row["img_per_s"])
    return {
        "n_max": n_max, "n_min": n_min,
        "efficiency_per_repeat": eff, "efficiency_median": eff_med, "efficiency_goal": goal_eff,
        "efficiency_verdict": _bench.goal(eff_med, goal_eff, at_most=False),
        "speedup_vs_tutorial_per_repeat": speedup, "speedup_vs_tutorial_median": _bench.median(speedup),
        "rss_growth_mb": growth, "main_vmhwm_growth_mb": growth_main, "rss_growth_goal_mb": GOAL_RSS_GROWTH_MB,
        "rss_growth_verdict": _bench.goal(growth["ours"], GOAL_RSS_GROWTH_MB),
        "ours_profile_median_s": profile,
        "rows": rows,
    }


def print_report(res: dict) -> None:
    s, st = res["summary"], res["settings"]
    print()
    print(f"== extract_throughput: {st['backbone']} weights={st['weights']} image_size={st['image_size']} "
          f"batch={st['batch_size']} device={st['device']}; {st['source_images']}; median of {st['repeats']} ==")
    print(_bench.table(s["rows"], [("method", "method"), ("n", "images"), ("img_per_s", "img/s", 1),
                                   ("wall_s", "wall s", 2), ("tree_peak_rss_mb", "tree peak RSS MB", 0),
                                   ("self_vmhwm_mb", "main VmHWM MB", 0),
                                   ("worker_maxrss_mb", "largest worker maxrss MB", 0)]))
    print()
    print(f"efficiency ours/model at {s['n_max']} images: {_bench.fmt(s['efficiency_median'])} "
          f"(per repeat {[round(e, 3) for e in s['efficiency_per_repeat']]}), goal >= {s['efficiency_goal']}: "
          f"{s['efficiency_verdict']}")
    print(f"speed-up over the tutorial way: {_bench.fmt(s['speedup_vs_tutorial_median'], 2)}x "
          f"(per repeat {[round(e, 2) for e in s['speedup_vs_tutorial_per_repeat']]})")
    g = s["rss_growth_mb"]
    print(f"tree peak RSS growth {s['n_min']} -> {s['n_max']} images: ours {_bench.fmt(g['ours'], 0)} MB, tutorial "
          f"{_bench.fmt(g['tutorial'], 0)} MB; goal for ours <= {s['rss_growth_goal_mb']:.0f} MB: "
          f"{s['rss_growth_verdict']}")
    p = s["ours_profile_median_s"]
    print("ours, where the time goes (median s): " + ", ".join(
        f"{k[:-2]} {p[k]:.2f}" for k in ("digest_s", "build_s", "decode_s", "device_decode_s", "wait_s", "forward_s",
                                         "write_s", "view_s", "total_s") if p.get(k) is not None)
          + " (decode is summed over the workers, in parallel with forward)")
    if p.get("forward_slowdown_inside_extract") is not None:
        print(f"forward inside extract took {p['forward_slowdown_inside_extract']:.2f}x the model-only time for the "
              f"same images; waiting on data {_bench.fmt(p['wait_share_of_total'])} of the total; outside the loop "
              f"(digests, build, view) {_bench.fmt(p['outside_loop_share'])}")


def plot(res: dict, path: Path) -> None:
    s = res["summary"]
    fig = _bench.new_figure(11.0, 4.2)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    rows = s["rows"]
    methods = ["model", "ours", "tutorial"]
    at_max = [next((r for r in rows if r["method"] == m and r["n"] == s["n_max"]), None) for m in methods]
    vals = [r["img_per_s"] if r else 0 for r in at_max]
    bars = ax1.bar(methods, vals, color=["#999999", "#1f77b4", "#ff7f0e"])
    for b, r in zip(bars, at_max):
        if r and r.get("img_per_s_range"):
            lo, hi = r["img_per_s_range"]
            ax1.plot([b.get_x() + b.get_width() / 2] * 2, [lo, hi], color="black", lw=1)
    ax1.set_ylabel("images / s (median, min-max bar)")
    ax1.set_title(f"throughput at {s['n_max']} images; efficiency {_bench.fmt(s['efficiency_median'], 2)}")
    for m, c in (("ours", "#1f77b4"), ("tutorial", "#ff7f0e")):
        pts = sorted((r["n"], r["tree_peak_rss_mb"]) for r in rows if r["method"] == m)
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=c,
                     label=f"{m}: process tree (sum of VmRSS)")
        hwm = sorted((r["n"], r["self_vmhwm_mb"]) for r in rows if r["method"] == m and r.get("self_vmhwm_mb"))
        if hwm:
            ax2.plot([p[0] for p in hwm], [p[1] for p in hwm], marker="s", color=c, linestyle="--",
                     label=f"{m}: main process VmHWM")
    ax2.set_xscale("log")
    ax2.set_xlabel("images")
    ax2.set_ylabel("peak RSS of the process tree, MB")
    ax2.set_title("peak memory vs data set size")
    ax2.legend(fontsize=7)
    st = res["settings"]
    fig.suptitle(f"{st['backbone']} ({st['weights']}) {st['image_size']} px, batch {st['batch_size']}, "
                 f"{res['machine']['cpu_model']} x{res['machine']['usable_cores']}", fontsize=9)
    _bench.save_figure(fig, path)


# --------------------------------------------------------------------------- CPU section

CPU_GOALS = {"ours_vs_plain": 1.3, "ours_vs_tutorial_small": 1.25, "ours_vs_tutorial_12mp": 1.5}


def cpu_section(a) -> dict:
    """Every backbone x photo set: ours, the levers child (plain and levered model only), the tutorial way.

    ``--from-partial FILE`` publishes the runs a cut-short run left in FILE (its ``<name>.json``)."""
    info = _bench.machine_info(a.device)
    sets = _photo_sets(a)
    print(f"extract_throughput --cpu-section: {a.backbones} at native size, batch {a.batch_size}, photo sets "
          f"{[(s, n) for s, _, n in sets]}, {a.repeats} repeats; machine: {_bench.describe_machine(info)}", flush=True)
    if a.from_partial:
        doc = json.loads(Path(a.from_partial).read_text())
        runs, decode = doc["runs"], doc.get("decode") or _decode_costs(a, sets)
    else:
        decode = _decode_costs(a, sets)
        runs = _cpu_runs(a, sets, decode)
    result = {"benchmark": "extract_throughput --cpu-section", "command": _bench.command_line(),
              "settings": {"backbones": a.backbones, "photos": a.photos, "batch_size": a.batch_size, "quick": a.quick,
                           "repeats": a.repeats, "rounds": a.rounds, "compute": a.compute, "decode": a.decode,
                           "images": "photo-like JPEG files, see benchmarks/_photos.py"},
              "machine": _bench.finish_info(info), "summary": summarise_cpu(runs), "decode": decode, "runs": runs}
    return _bench.publish(result, a.out, a.name, lambda path: plot_cpu(result, path), print_cpu)


def _photo_sets(a) -> list[tuple[str, Path, int]]:
    sets = []
    for spec in a.photos.split(","):
        size, n = spec.split(":")
        w, h = (int(v) for v in size.split("x"))
        sets.append((size, _photos.photo_pool(int(n), w, h, data_dir=a.data_dir or _bench.DEFAULT_DATA_DIR), int(n)))
    return sets


def _decode_costs(a, sets) -> dict:
    b = argparse.Namespace(**{**vars(a), "backbone": "resnet18", "weights": "none"})
    decode = {label: _bench.run_child(child_cmd(b, "decode", folder, 8)) for label, folder, _ in sets}
    for label, d in decode.items():
        d.pop("memory_samples", None)
        print("  " + _decode_line(label, d), flush=True)
    return decode


def _cpu_runs(a, sets, decode: dict) -> list[dict]:
    """Repeats outermost and the method order rotated, so a cut-short run has every configuration once."""
    runs: list[dict] = []
    for rep in range(a.repeats):
        for backbone in a.backbones.split(","):
            b = argparse.Namespace(**{**vars(a), "backbone": backbone,
                                      "weights": "DEFAULT" if backbone == "efficientnet_lite0" else "none"})
            for label, folder, n in sets:
                order = ["ours", "levers", "tutorial"]
                for method in order[rep % 3:] + order[:rep % 3]:
                    res = _bench.run_child(child_cmd(b, method, folder, n))
                    res.pop("memory_samples", None)
                    res.update(repeat=rep, backbone=backbone, photos=label)
                    runs.append(res)
                    print(f"  repeat {rep + 1}/{a.repeats} {backbone:18s} {label:9s} {method:8s}: "
                          f"{res['img_per_s']:7.1f} img/s" + (f" (plain {res['plain_img_per_s']:.1f}, levers "
                          f"{res['levers']})" if method == "levers" else ""), flush=True)
                _bench.atomic_write_json(Path(a.out) / f"{a.name}.json",
                                         {"complete": False, "decode": decode, "runs": runs})
    return runs


def summarise_cpu(runs: list[dict]) -> list[dict]:
    rows = []
    for key in dict.fromkeys((r["backbone"], r["photos"]) for r in runs):
        mine = [r for r in runs if (r["backbone"], r["photos"]) == key]
        by_rep: dict = {}
        for r in mine:
            by_rep.setdefault(r["repeat"], {})[r["method"]] = r
        full = [m for m in by_rep.values() if len(m) == 3]

        def ratio(num, den):
            return _bench.median(num(m) / den(m) for m in full)

        ours, tut = (lambda m: m["ours"]["img_per_s"]), (lambda m: m["tutorial"]["img_per_s"])
        plain, lev = (lambda m: m["levers"]["plain_img_per_s"]), (lambda m: m["levers"]["levers_img_per_s"])
        first = full[0] if full else {}
        rows.append({
            "backbone": key[0], "photos": key[1], "repeats": len(full),
            "levers": first.get("ours", {}).get("levers"),
            "ours": _bench.median(ours(m) for m in full), "plain_model": _bench.median(plain(m) for m in full),
            "levers_model": _bench.median(lev(m) for m in full), "tutorial": _bench.median(tut(m) for m in full),
            "ours_vs_plain": ratio(ours, plain), "ours_vs_tutorial": ratio(ours, tut),
            "levers_vs_plain": ratio(lev, plain), "ours_vs_levers_model": ratio(ours, lev),
            "max_rel_diff": max((m["levers"]["max_rel_diff"] for m in full), default=None),
            "levers_setup_s": _bench.median(m["ours"]["timings"].get("levers_s") for m in full),
            "ours_wait_s": _bench.median(m["ours"]["timings"].get("wait_s") for m in full),
            "ours_forward_s": _bench.median(m["ours"]["timings"].get("forward_s") for m in full),
            "ours_decode_s": _bench.median(m["ours"]["timings"].get("decode_s") for m in full),
            "tutorial_decode_s": _bench.median(m["tutorial"]["timings"].get("decode_s") for m in full),
            "n": first.get("ours", {}).get("n")})
    return rows


def _decode_line(label: str, d: dict) -> str:
    return (f"decode + preprocess to 224 px, {label}: full {d['full_ms']:.0f} ms/img, draft {d['draft_ms']:.0f} "
            f"ms/img (one core); draft's pixels differ by up to {d['draft_max_abs_diff_normalised']:.3f} "
            "(normalised units)")


def print_cpu(res: dict) -> None:
    print()
    for label, d in res.get("decode", {}).items():
        print(_decode_line(label, d))
    print(f"== extract_throughput --cpu-section: median of {res['settings']['repeats']} paired repeats ==")
    print(_bench.table(res["summary"], [
        ("backbone", "backbone"), ("photos", "photos"), ("n", "images"), ("levers", "levers"),
        ("ours", "ours img/s", 1), ("plain_model", "plain model img/s", 1), ("levers_model", "levers model img/s", 1),
        ("tutorial", "tutorial img/s", 1), ("ours_vs_plain", "ours/plain model", 2),
        ("ours_vs_tutorial", "ours/tutorial", 2), ("levers_vs_plain", "levers/plain model", 2),
        ("max_rel_diff", "max rel diff", 7), ("levers_setup_s", "levers set-up s", 1),
        ("ours_wait_s", "ours waiting on data s", 1)]))


def plot_cpu(res: dict, path: Path) -> None:
    rows = res["summary"]
    fig = _bench.new_figure(max(8.0, 1.1 * len(rows)), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ways = [("ours", "#1f77b4"), ("plain_model", "#999999"), ("levers_model", "#2ca02c"), ("tutorial", "#ff7f0e")]
    for j, (w, c) in enumerate(ways):
        ax.bar([i + (j - 1.5) * 0.2 for i in range(len(rows))], [r[w] or 0 for r in rows], 0.2, color=c, label=w)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['backbone']}\n{r['photos']}" for r in rows], fontsize=7)
    ax.set_ylabel("images / s (median)")
    ax.set_title(f"CPU, native size, {res['machine']['cpu_model']} x{res['machine']['usable_cores']}", fontsize=9)
    ax.legend(fontsize=7)
    _bench.save_figure(fig, path)


if __name__ == "__main__":
    main()
