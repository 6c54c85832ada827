#!/usr/bin/env python3
"""Start-up latency of the CLI on cached features, next to the bare import floors.

Every command runs as a fresh process (``python -m featcache ...``, what a user's shell
pays), after a set-up that fills a store: ``builtin:clipart`` extracted with
``efficientnet_lite0``, one head of each kind fitted and saved, a pipeline of the same
features run once. Then, per repeat, in a rotated order:

* floors: ``python -c "import click, h5py, numpy"`` (bare) and the same plus
  ``sklearn.linear_model`` (sklearn); ``--torch-floor`` adds ``import torch, torchvision``;
* ``featcache --help`` and ``featcache results``;
* a warm ``featcache extract`` (a cache hit);
* ``featcache fit-head --features KEY --head H`` for every head;
* ``featcache predict`` with the saved logreg head on the cached images;
* ``featcache predict`` with that head on a folder of new images (a new folder each repeat):
  the rows are computed into the set the store holds, with the levers its record names (the
  kept ONNX Runtime graph for efficientnet_lite0), its identity from the resolution index;
* ``featcache run`` of a pipeline whose rows are all cached (sklearn heads).

Ratios are taken within a repeat (command / its floor) and reported as medians.
Goals (issue 13, 2 CPU cores): warm extract <= 2x the bare floor; fit-head logreg and the
cached pipeline <= 2x the sklearn floor; ``--help`` and ``results`` <= 1.5x the bare floor.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

DATA = "builtin:clipart"
NEW_IMAGES = 16  # images of the "predict (new images)" folder of each repeat (generated, 96 px JPEG)
SKLEARN_HEADS = ("logreg", "svm", "knn", "ncm")
TORCH_HEADS = ("linear", "mlp")
#: command name -> (floor it is compared with, goal ratio or None)
GOALS = {"help": ("bare", 1.5), "results": ("bare", 1.5), "extract (warm)": ("bare", 2.0),
         "fit-head logreg": ("sklearn", 2.0), "run (all cached)": ("sklearn", 2.0)}
FLOORS = {"bare": "import click, h5py, numpy", "sklearn": "import click, h5py, numpy, sklearn.linear_model",
          "torch": "import torch, torchvision"}
PIPELINE = """name = "cli-latency"
description = "every row cached, scikit-learn heads"
[data]
source = "{data}"
[[backbones]]
name = "{backbone}"
weights = "{weights}"
{image_size}{heads}"""


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-test settings: 1 repeat, logreg and linear only, "
                   "resnet18 with random weights at 32 px")
    p.add_argument("--full", action="store_true", help="7 repeats")
    p.add_argument("--repeats", type=int, default=None, help="default 5 (1 with --quick, 7 with --full)")
    p.add_argument("--torch-floor", action="store_true", help="also time `import torch, torchvision`")
    p.add_argument("--backbone", default=None, help="default efficientnet_lite0 (resnet18 with --quick)")
    p.add_argument("--weights", default=None, help="default DEFAULT (none with --quick)")
    p.add_argument("--image-size", type=int, default=None, help="default: the weights' own (32 with --quick)")
    p.add_argument("--cache", default=None, help="store folder (default: a new temporary folder)")
    p.add_argument("--out", default=str(_bench.RESULTS_DIR))
    p.add_argument("--name", default="cli_latency")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (1 if a.quick else 7 if a.full else 5)
    a.heads = ("logreg", "linear") if a.quick else SKLEARN_HEADS + TORCH_HEADS
    a.backbone = a.backbone or ("resnet18" if a.quick else "efficientnet_lite0")
    a.weights = a.weights or ("none" if a.quick else "DEFAULT")
    a.image_size = a.image_size or (32 if a.quick else None)
    a.extract_args = ["--backbone", a.backbone, "--weights", a.weights] + (
        ["--image-size", str(a.image_size)] if a.image_size else [])
    return a


def featcache(*args: str) -> list[str]:
    return [sys.executable, "-m", "featcache", *args]


def run(cmd: list[str], env: dict) -> float:
    """Wall seconds of one fresh process; raises with its output when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


def set_up(a, cache: Path, env: dict) -> dict[str, list[str]]:
    """Fill the store; -> the timed commands by name."""
    c = ["--cache", str(cache)]
    extract = featcache("extract", "--data", DATA, *a.extract_args, "-q", *c)
    t0 = time.perf_counter()
    run(extract, env)
    print(f"set-up: extracted {DATA} with {a.backbone} in {time.perf_counter() - t0:.1f} s", flush=True)
    key_cmd = featcache("extract", "--data", DATA, *a.extract_args, "--json", *c)
    out = json.loads(subprocess.run(key_cmd, capture_output=True, text=True, env=env, check=True).stdout)
    key = f"{out['feature_key']}:{out['data']}"  # KEY:DATA: predict on new images adds views of other data
    head = cache / "latency-logreg.head.npz"
    run(featcache("fit-head", "--features", key, "--head", "logreg", "-o", str(head), *c), env)
    heads = "".join(f'[[heads]]\nname = "{h}"\n' for h in SKLEARN_HEADS if h in a.heads)
    pipeline = cache / "cli-latency.toml"
    pipeline.write_text(PIPELINE.format(data=DATA, backbone=a.backbone, weights=a.weights, heads=heads,
                                        image_size=f"image_size = {a.image_size}\n" if a.image_size else ""))
    run(featcache("run", str(pipeline), "-q", *c), env)
    cmds = {f"floor {k}": [sys.executable, "-c", v] for k, v in FLOORS.items() if k != "torch" or a.torch_floor}
    cmds.update({"help": featcache("--help"), "results": featcache("results", *c),
                 "extract (warm)": extract})
    for h in a.heads:
        cmds[f"fit-head {h}"] = featcache("fit-head", "--features", key, "--head", h, "-o",
                                          str(cache / f"timed-{h}.head.npz"), *c)
    cmds["predict (cached)"] = featcache("predict", "--head", str(head), "--data", DATA, "-o",
                                         str(cache / "predictions.csv"), *c)
    run(cmds["predict (cached)"], env)  # the unlabelled view of the same rows, written once
    pool = _bench.image_pool(NEW_IMAGES * a.repeats, size=96, seed=11)
    files = _bench.pool_files(pool)
    for r in range(a.repeats):  # new images for each repeat, so every run computes their rows
        _bench.link_subset(pool, cache / f"new-{r}", files[r * NEW_IMAGES:(r + 1) * NEW_IMAGES])
    cmds["predict (new images)"] = featcache("predict", "--head", str(head), "--data", str(cache / "new-{repeat}"),
                                             "-o", str(cache / "new-predictions.csv"), *c)
    cmds["run (all cached)"] = featcache("run", str(pipeline), "-q", *c)
    return cmds


def measure(cmds: dict[str, list[str]], repeats: int, env: dict) -> list[dict]:
    """One dict of wall seconds per repeat; the order rotates between repeats. ``{repeat}`` in a
    command's arguments is the repeat's number."""
    names = list(cmds)
    out = []
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        walls = {n: run([arg.replace("{repeat}", str(r)) for arg in cmds[n]], env) for n in order}
        out.append(walls)
        print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {walls[n]:.2f} s" for n in names), flush=True)
    return out


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for name in runs[0]:
        if name.startswith("floor "):
            floor, limit = name.split(" ", 1)[1], None
        else:
            floor, limit = GOALS.get(name, ("sklearn" if "fit-head" in name or "predict" in name else "bare", None))
        ratio = _bench.median(r[name] / r[f"floor {floor}"] for r in runs) if not name.startswith("floor") else None
        rows.append({"command": name, "wall_s": _bench.median(r[name] for r in runs),
                     "spread_s": _bench.spread(r[name] for r in runs), "floor": floor, "ratio": ratio,
                     "goal": limit, "verdict": _bench.goal(ratio, limit) if limit else "-"})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    fig = _bench.new_figure(8, 0.35 * len(rows) + 1)
    ax = fig.add_subplot(111)
    shown = [r for r in rows if r["ratio"] is not None]
    ax.barh([r["command"] for r in shown], [r["ratio"] for r in shown], color="#4c72b0")
    for i, r in enumerate(shown):
        if r["goal"]:
            ax.plot([r["goal"]] * 2, [i - 0.4, i + 0.4], color="#c44e52")
    ax.invert_yaxis()
    ax.set_xlabel("wall time / import floor (median of fresh processes); red: goal")
    _bench.save_figure(fig, path)


def report(res: dict) -> None:
    print("\n== CLI latency on cached features (fresh processes, medians) ==")
    print(_bench.table(res["rows"], [("command", "command"), ("wall_s", "wall s", 2), ("floor", "floor"),
                                     ("ratio", "x floor", 2), ("goal", "goal", 1), ("verdict", "verdict")]))


def main(argv=None) -> dict:
    a = parse(argv)
    info = _bench.machine_info()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                   os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="featcache-cli-latency-") as tmp:
        cache = Path(a.cache) if a.cache else Path(tmp) / "cache"
        cmds = set_up(a, cache, env)
        runs = measure(cmds, a.repeats, env)
    result = {"benchmark": "cli_latency", "command": _bench.command_line(), "machine": _bench.finish_info(info),
              "settings": {"quick": a.quick, "repeats": a.repeats, "data": DATA, "backbone": a.backbone,
                           "weights": a.weights, "image_size": a.image_size,
                           "heads": list(a.heads), "floors": FLOORS},
              "commands": {n: " ".join(c[2:] if c[1] == "-m" else c[1:]) for n, c in cmds.items()},
              "runs": runs, "rows": summarise(runs)}
    return _bench.publish(result, a.out, a.name, lambda p: plot(result["rows"], p), report)


if __name__ == "__main__":
    main()
