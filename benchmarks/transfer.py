#!/usr/bin/env python3
"""Transfer learning on real images: cached pretrained features against the other ways.

The seeds' headline ("a frozen pretrained backbone + a light head beats training from
scratch, at a fraction of the cost of fine-tuning"), measured on real drawings that a
Debian package ships: the Open Clip Art Library (``sudo apt-get install openclipart-png``,
installed under ``/usr/share/openclipart/png``; public domain). Without it the script
says so and exits 0.

Data: ``scripts/make_clipart.py --per-class 60`` (the rule of ``builtin:clipart``, see
``featcache/data/clipart/PROVENANCE.md``: the same 8 categories, seeded shuffle, blank /
placeholder / duplicate drawings skipped, longest side 128 px; the first 40 of each class
are the bundled ``builtin:clipart``), i.e. 480 images, built once under
``$FEATCACHE_BENCH_DATA``. One seeded stratified split serves every method: 25 % test
(120 images, so that a test accuracy carries a Wilson interval of about +-0.08), 15 %
validation, the rest (288) for training.

Rows (accuracy on the same test rows with its 95 % Wilson interval; wall time from the
image files to the test predictions, extraction included):

* ``efficientnet_lite0`` (ImageNet weights) features + every head, each with its default
  sweep chosen on validation (``fit_head(..., use_default_grid=True)``); the one extraction
  is counted in every row, since each row is what a user would run alone;
* the same network with random weights + logreg (what pretraining is worth);
* raw pixels (32 x 32 x 3) + logreg;
* a small CNN trained from scratch at 64 px (4 conv blocks, AdamW, flips and shifts as
  augmentation, early stopping on validation accuracy);
* fine-tuning the whole pretrained ``efficientnet_lite0`` end to end for a few epochs
  (AdamW, 10x the backbone's learning rate for the new final layer, the same
  augmentation, the best epoch on validation kept).

Size: 128 px input for the network (the drawings are at most 128 px on their longest
side, so 224 px would only upsample) keeps all of it to about 15 minutes on 2 shared CPU
cores; fine-tuning takes most of it. ``--quick``: 6 images per class at 64 px, one epoch.
"""
from __future__ import annotations

import argparse
import copy
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

SOURCE = Path("/usr/share/openclipart/png")
REPO = Path(__file__).resolve().parent.parent


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-test settings: 6 per class, 64 px, 1 epoch")
    p.add_argument("--source", default=str(SOURCE), help="openclipart-png root")
    p.add_argument("--per-class", type=int, default=None, help="images per class (default 60; 6 with --quick)")
    p.add_argument("--image-size", type=int, default=None, help="network input px (default 128; 64 with --quick)")
    p.add_argument("--cnn-size", type=int, default=64, help="input px of the CNN trained from scratch")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 3; 1 with --quick)")
    p.add_argument("--cnn-epochs", type=int, default=None, help="CNN epoch limit (default 60; 2 with --quick)")
    p.add_argument("--heads", default=None, help="comma list (default: every registered head)")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(_bench.RESULTS_DIR))
    p.add_argument("--name", default="transfer")
    a = p.parse_args(argv)
    a.per_class = a.per_class or (6 if a.quick else 60)
    a.image_size = a.image_size or (64 if a.quick else 128)
    a.epochs = a.epochs or (1 if a.quick else 3)
    a.cnn_epochs = a.cnn_epochs or (2 if a.quick else 60)
    if a.quick:
        a.cnn_size = min(a.cnn_size, 32)
    return a


def build_data(a) -> Path:
    """The clipart subset, built once per (per-class, source) under the benchmark data folder."""
    dest = _bench.DEFAULT_DATA_DIR / f"openclipart-{a.per_class}x8-seed0-128px"
    if not (dest / "SOURCES.csv").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_clipart.py"), "--source", a.source,
                        "--dest", str(dest), "--per-class", str(a.per_class)], check=True, stdout=subprocess.DEVNULL)
    return dest


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (loky workers): with the wall time it says how
    much of a slow run was waiting for a shared machine's cores."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def since(start: tuple[float, float]) -> dict:
    """``{"wall_s", "cpu_s"}`` since ``start = (time.perf_counter(), cpu_seconds())``."""
    return {"wall_s": time.perf_counter() - start[0], "cpu_s": cpu_seconds() - start[1]}


# --------------------------------------------------------------------------- images as tensors


def load_tensors(view, root: Path, size: int, mean, std):
    """Every image of the view as a normalised (N, 3, size, size) tensor, in view row order."""
    import torch

    from featcache.extraction.backbones.registry import Preprocess
    from featcache.extraction.images import decode_image, to_rgb

    tf = Preprocess(resize=size, crop=size, mean=tuple(mean), std=tuple(std)).build()
    return torch.stack([tf(to_rgb(decode_image(str(root / i)))) for i in view.ids])


def augment(x):
    """Random horizontal flips and shifts of up to 1/8 of the side (edge pixels repeated)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    flip = torch.rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


def predict_all(model, x, batch: int = 64) -> np.ndarray:
    import torch

    model.eval()
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).argmax(1).numpy()


def train_epochs(model, optimizer, x, y, idx, *, epochs: int, patience: int, batch: int = 16, seed: int = 0):
    """Train on rows ``idx["train"]`` with augmentation; keep the state of the best epoch on
    ``idx["val"]`` (early stopping after ``patience`` epochs without improvement)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    yt = torch.as_tensor(y, dtype=torch.long)
    best, best_state, since = -1.0, None, 0
    for epoch in range(epochs):
        model.train()
        order = idx["train"][torch.randperm(len(idx["train"]), generator=gen).numpy()]
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(augment(x[rows])), yt[rows])
            loss.backward()
            optimizer.step()
        val = float(np.mean(predict_all(model, x[idx["val"]]) == y[idx["val"]]))
        if val > best:
            best, best_state, since = val, copy.deepcopy(model.state_dict()), 0
        else:
            since += 1
            if since >= patience:
                break
    model.load_state_dict(best_state)
    return {"epochs_run": epoch + 1, "best_val_accuracy": best}


def small_cnn(n_classes: int):
    import torch.nn as nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), *block(128, 256),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(256, n_classes))


# --------------------------------------------------------------------------- the methods


def row(method: str, features: str, y_test, pred, timing: dict, **extra) -> dict:
    from featcache.train.metrics import compute_metrics

    m = compute_metrics(y_test, pred)
    return {"method": method, "features": features, "test_accuracy": m["accuracy"],
            "test_accuracy_ci95": m["accuracy_ci95"], "balanced_accuracy": m["balanced_accuracy"],
            "macro_f1": m["macro_f1"], "n_test": m["n"], **timing, **extra}


def cached_feature_rows(a, data: Path, cache: str, heads: list[str]) -> tuple[list[dict], object]:
    """Pretrained lite0 features + every head, random-weights lite0 + logreg."""
    from featcache.extraction.engine import extract
    from featcache.store.views import load_features
    from featcache.train.fitting import fit_head

    rows = []
    for weights, names in (("DEFAULT", heads), ("none", ["logreg"])):
        start = (time.perf_counter(), cpu_seconds())
        r = extract(str(data), backbone="efficientnet_lite0", weights=weights, image_size=a.image_size,
                    cache_dir=cache, workers=0)
        ext = since(start)
        label = f"efficientnet_lite0 {'ImageNet' if weights == 'DEFAULT' else 'random-init'} {a.image_size} px"
        for h in names:
            start = (time.perf_counter(), cpu_seconds())
            fr = fit_head(r.view, h, use_default_grid=True, val_fraction=a.val_fraction,
                          test_fraction=a.test_fraction, seed=a.seed, cache_dir=cache, log=False)
            fit = since(start)
            t = fr.metrics["test"]
            rows.append({"method": f"cached features + {h}", "features": label, "test_accuracy": t["accuracy"],
                         "test_accuracy_ci95": t["accuracy_ci95"], "balanced_accuracy": t["balanced_accuracy"],
                         "macro_f1": t["macro_f1"], "n_test": t["n"], "params": fr.params,
                         "wall_s": ext["wall_s"] + fit["wall_s"], "cpu_s": ext["cpu_s"] + fit["cpu_s"],
                         "extract_s": ext["wall_s"], "fit_s": fr.timings["fit_s"]})
            print(f"  {rows[-1]['method']:28s} {label}: test {t['accuracy']:.3f}, {rows[-1]['wall_s']:.1f} s",
                  flush=True)
        if weights == "DEFAULT":
            view = load_features(r.view)
    return rows, view


def raw_pixel_row(a, view, data: Path, idx: dict) -> dict:
    """logreg on 32 x 32 x 3 pixels in [0, 1], chosen on validation from its default grid."""
    import torch.nn.functional as F

    from featcache.train.heads import default_grid, make_head
    from featcache.train.sweeps import sweep

    start = (time.perf_counter(), cpu_seconds())
    x = load_tensors(view, data, 32, (0, 0, 0), (1, 1, 1))
    X = F.adaptive_avg_pool2d(x, 32).flatten(1).numpy()
    y = view.labels
    res = sweep(lambda p: make_head("logreg", **p), default_grid("logreg"), X[idx["train"]], y[idx["train"]],
                X[idx["val"]], y[idx["val"]])
    pred = res.best_estimator.predict(X[idx["test"]])
    return row("raw pixels + logreg", "32x32x3 pixels", y[idx["test"]], pred, since(start),
               params=res.best_params)


def cnn_row(a, view, data: Path, idx: dict) -> dict:
    import torch

    start = (time.perf_counter(), cpu_seconds())
    x = load_tensors(view, data, a.cnn_size, (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(a.seed)
    model = small_cnn(len(view.class_names))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    info = train_epochs(model, opt, x, view.labels, idx, epochs=a.cnn_epochs, patience=10, batch=32, seed=a.seed)
    pred = predict_all(model, x[idx["test"]])
    return row("small CNN from scratch", f"{a.cnn_size} px images", view.labels[idx["test"]], pred,
               since(start), **info)


def finetune_row(a, view, data: Path, idx: dict) -> dict:
    import torch

    from featcache.extraction.backbones import get_backbone
    from featcache.extraction.layers import final_layer_name

    start = (time.perf_counter(), cpu_seconds())
    entry = get_backbone("efficientnet_lite0")
    choice = entry.resolve_weights("DEFAULT")
    x = load_tensors(view, data, a.image_size, choice.preprocess.mean, choice.preprocess.std)
    model = entry.build(choice)
    last = final_layer_name(model)
    setattr(model, last, torch.nn.Linear(getattr(model, last).in_features, len(view.class_names)))
    head = list(getattr(model, last).parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith(last + ".")]
    opt = torch.optim.AdamW([{"params": body, "lr": 3e-4}, {"params": head, "lr": 3e-3}], weight_decay=1e-4)
    info = train_epochs(model, opt, x, view.labels, idx, epochs=a.epochs, patience=a.epochs, seed=a.seed)
    pred = predict_all(model, x[idx["test"]])
    return row("fine-tuned end to end", f"efficientnet_lite0 ImageNet {a.image_size} px", view.labels[idx["test"]],
               pred, since(start), **info)


# --------------------------------------------------------------------------- run, report, plot


def main(argv=None) -> dict | None:
    a = parse(argv)
    if not Path(a.source).is_dir():
        print(f"transfer: skipped: {a.source} not found; it needs Debian's openclipart-png "
              "(sudo apt-get install openclipart-png) or --source DIR")
        return None
    import_s = _bench.warm_imports()
    from featcache.train.heads import list_heads
    from featcache.train.splits import make_splits

    heads = a.heads.split(",") if a.heads else list_heads()
    info = _bench.machine_info("cpu")
    data = build_data(a)
    print(f"transfer: {data} ({a.per_class} x 8 classes) at {a.image_size} px; heads {heads}", flush=True)
    print(f"machine: {_bench.describe_machine(info)}", flush=True)
    cache = str(Path(_bench.DEFAULT_DATA_DIR) / f"transfer-cache-{os.getpid()}")
    try:
        rows, view = cached_feature_rows(a, data, cache, heads)
        assigned = make_splits(view.labels, view.split, val_fraction=a.val_fraction, test_fraction=a.test_fraction,
                               seed=a.seed)
        idx = {s: np.flatnonzero(assigned == s) for s in ("train", "val", "test")}
        for method in (raw_pixel_row, cnn_row, finetune_row):
            rows.append(method(a, view, data, idx))
            print(f"  {rows[-1]['method']:28s}: test {rows[-1]['test_accuracy']:.3f}, {rows[-1]['wall_s']:.1f} s",
                  flush=True)
    finally:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
    result = {
        "benchmark": "transfer", "command": _bench.command_line(),
        "settings": {"source": a.source, "per_class": a.per_class, "n_images": len(view.labels),
                     "classes": view.class_names, "image_size": a.image_size, "cnn_size": a.cnn_size,
                     "epochs": a.epochs, "cnn_epochs": a.cnn_epochs, "heads": heads, "seed": a.seed,
                     "split": {k: int(len(v)) for k, v in idx.items()}, "quick": a.quick, "import_s": import_s},
        "machine": _bench.finish_info(info),
        "rows": rows,
    }
    return _bench.publish(result, a.out, a.name, lambda path: plot(result, path), print_report)


def _ci_text(r: dict) -> str:
    lo, hi = r["test_accuracy_ci95"]
    return f"{r['test_accuracy']:.3f} [{lo:.2f}, {hi:.2f}]"


def print_report(res: dict) -> None:
    st = res["settings"]
    print()
    print(f"== transfer: openclipart-png, {st['n_images']} images in {len(st['classes'])} classes, split "
          f"{st['split']['train']}/{st['split']['val']}/{st['split']['test']} (train/val/test) ==")
    rows = [{**r, "acc": _ci_text(r)} for r in res["rows"]]
    print(_bench.table(rows, [("method", "method"), ("features", "input"), ("acc", "test accuracy [95 %]"),
                              ("macro_f1", "macro-F1"), ("wall_s", "wall s", 1), ("cpu_s", "cpu s", 1)]))
    print("wall s: from the image files to test predictions (extraction or decoding included); cpu s: CPU time "
          "of the same (all threads and worker processes; on a shared machine wall s >> cpu s / cores); test "
          "accuracy with its Wilson 95 % interval on the same test rows")


def plot(res: dict, path: Path) -> None:
    fig = _bench.new_figure(8.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for k, r in enumerate(res["rows"]):
        lo, hi = r["test_accuracy_ci95"]
        acc = r["test_accuracy"]
        ax.errorbar([r["wall_s"]], [acc], yerr=[[max(acc - lo, 0.0)], [max(hi - acc, 0.0)]],
                    fmt="os^Dv<>P*Xh"[k % 11], capsize=3, color=f"C{k % 10}",
                    label=f"{r['method']} ({r['features']})")
    st = res["settings"]
    _bench.save_log_x_plot(fig, ax, path, xlabel="wall time from image files to test predictions (s, log)",
                           ylabel="test accuracy (95 % Wilson interval)",
                           legend={"fontsize": 7, "loc": "upper center", "bbox_to_anchor": (0.5, -0.13), "ncol": 2},
                           title=f"openclipart-png: {st['n_images']} images, {len(st['classes'])} classes, "
                                 f"{st['split']['test']} test images")


if __name__ == "__main__":
    main()
