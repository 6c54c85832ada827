"""Shared helpers of the benchmark scripts in this folder (not part of featcache's API).

Every script imports this module as ``_bench`` (it sits beside them, so
``python benchmarks/<script>.py`` finds it) and uses only featcache and
featcache's own dependencies.

What lives here:

* machine description (CPU model, cores, torch threads, GPU, load average) for every JSON;
* atomic JSON writes and plain-text tables;
* deterministic synthetic image sets (real PNG/JPEG files on disk, cached by spec);
* manifest subsets (``--limit``) for folder and torchvision data;
* a memory sampler that follows a process tree through ``/proc``
  (main process + DataLoader workers + joblib/loky workers).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
DEFAULT_DATA_DIR = Path(os.environ.get("FEATCACHE_BENCH_DATA", Path(tempfile.gettempdir()) / "featcache-bench-data"))
MB = 1024 * 1024


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_info(device: str | None = None) -> dict:
    import torch

    import featcache

    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "featcache": featcache.__version__,
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "loadavg_start": list(os.getloadavg()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    if device:
        info["device"] = device
    return info


def finish_info(info: dict) -> dict:
    info["loadavg_end"] = list(os.getloadavg())
    return info


def describe_machine(info: dict) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    la = info.get("loadavg_start")
    load = f"; load average at start {la[0]:.1f}" if la else ""
    return (f"{info['cpu_model']}, {info['usable_cores']} usable cores, torch {info['torch']} with "
            f"{info['torch_threads']} threads{gpu}{load}")


# --------------------------------------------------------------------------- output


def _atomic_write(path: str | os.PathLike, mode: str, write: Callable[[Any], None]) -> Path:
    """Write through ``write(file)`` into a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    def write(f):
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")

    return _atomic_write(path, "w", write)


def publish(result: dict, out: str | os.PathLike, name: str, plot: Callable[[Path], Any],
            report: Callable[[dict], None]) -> dict:
    """The end of every benchmark: JSON and PNG under ``out``, the table on stdout."""
    out = Path(out)
    atomic_write_json(out / f"{name}.json", result)
    plot(out / f"{name}.png")
    report(result)
    print(f"wrote {out / (name + '.json')} and {out / (name + '.png')}")
    return result


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def median(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(vals) if vals else None


def spread(values: Iterable[float | None]) -> list[float] | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return [min(vals), max(vals)] if vals else None


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if v != 0 and abs(v) < 10 ** -(digits):
            return f"{v:.1e}"
        return f"{v:,.{digits}f}"
    return str(v)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str] | tuple[str, str, int]], *,
          markdown: bool = False) -> str:
    """``columns``: (key, header[, digits]). Plain aligned text, or a Markdown table."""
    cells = [[h for _, h, *_ in columns]]
    for r in rows:
        cells.append([fmt(r.get(c[0]), c[2] if len(c) > 2 else 3) for c in columns])
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = []
    for k, row in enumerate(cells):
        out.append("  ".join(s.rjust(w) if k and i else s.ljust(w) for i, (s, w) in enumerate(zip(row, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def goal(value: float | None, limit: float, *, at_most: bool = True) -> str:
    if value is None:
        return "n/a"
    ok = value <= limit if at_most else value >= limit
    return "PASS" if ok else "MISS"


# --------------------------------------------------------------------------- synthetic images

SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring", "diamond", "bars", "dots", "star", "arc")


def _draw_one(i: int, n_classes: int, size: int, seed: int):
    """Image ``i`` of a deterministic synthetic set: class = i % n_classes.

    A smooth two-colour gradient background, one class-specific shape at a random
    place/scale/colour, and mild pixel noise. Smooth content keeps JPEG files at
    realistic sizes (not the incompressible worst case of pure noise).
    """
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([seed, i])
    label = i % n_classes
    c0, c1 = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    grid = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
    grid = (grid - grid.min()) / max(float(np.ptp(grid)), 1e-6)
    bg = c0[None, None, :] * (1 - grid[..., None]) + c1[None, None, :] * grid[..., None]
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    s = size * rng.uniform(0.35, 0.7)
    cx, cy = rng.uniform(s / 2, size - s / 2, size=2)
    x0, y0, x1, y1 = cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2
    col = tuple(int(v) for v in rng.integers(0, 256, size=3))
    w = max(1, int(s / 8))
    shape = SHAPES[label % len(SHAPES)]
    if shape == "ellipse":
        d.ellipse([x0, y0, x1, y1], fill=col)
    elif shape == "rectangle":
        d.rectangle([x0, y0 + s / 4, x1, y1 - s / 4], fill=col)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=col)
    elif shape == "cross":
        d.rectangle([cx - w, y0, cx + w, y1], fill=col)
        d.rectangle([x0, cy - w, x1, cy + w], fill=col)
    elif shape == "ring":
        d.ellipse([x0, y0, x1, y1], outline=col, width=w)
    elif shape == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=col)
    elif shape == "bars":
        for k in range(3):
            yy = y0 + k * s / 3
            d.rectangle([x0, yy, x1, yy + s / 6], fill=col)
    elif shape == "dots":
        r = s / 8
        for dx in (-1, 1):
            for dy in (-1, 1):
                px, py = cx + dx * s / 4, cy + dy * s / 4
                d.ellipse([px - r, py - r, px + r, py + r], fill=col)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = s / 2 if k % 2 == 0 else s / 5
            a = np.pi / 5 * k - np.pi / 2
            pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
        d.polygon(pts, fill=col)
    else:  # arc
        d.arc([x0, y0, x1, y1], start=0, end=200, fill=col, width=w)
    if size >= 64:
        img = img.filter(ImageFilter.GaussianBlur(radius=size / 256))
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, 6, size=(size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), label


def _write_range(args) -> int:
    dest, start, stop, n_classes, size, fmt_, seed, quality = args
    ext = "jpg" if fmt_ == "jpeg" else "png"
    for i in range(start, stop):
        img, label = _draw_one(i, n_classes, size, seed)
        path = Path(dest) / f"class_{label:02d}" / f"img_{i:06d}.{ext}"
        if fmt_ == "jpeg":
            img.save(path, format="JPEG", quality=quality)
        else:
            img.save(path, format="PNG")
    return stop - start


def image_pool(n: int, *, size: int, fmt: str = "jpeg", n_classes: int = 10, seed: int = 0, quality: int = 90,
               data_dir: str | os.PathLike | None = None, workers: int | None = None) -> Path:
    """A folder of ``n`` generated images (one sub-folder per class), built once and reused.

    Image ``i`` depends only on (seed, i, size, format), so the first ``k`` files of a
    pool of ``n`` are the same bytes as a pool of ``k``. Built in a temporary folder and
    renamed, so a half-written pool is never used.
    """
    fmt = fmt.lower()
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"format {fmt!r}: expected jpeg or png")
    base = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
    dest = base / f"shapes-{fmt}-{size}px-{n_classes}c-seed{seed}-q{quality}-n{n}"

    def fill(tmp: Path) -> dict:
        for c in range(n_classes):
            (tmp / f"class_{c:02d}").mkdir()
        procs = workers or max(1, min(usable_cores(), 8))
        step = max(1, math.ceil(n / (procs * 4)))
        jobs = [(str(tmp), a, min(n, a + step), n_classes, size, fmt, seed, quality) for a in range(0, n, step)]
        if procs > 1 and n > 200:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=procs) as ex:
                list(ex.map(_write_range, jobs))
        else:
            for j in jobs:
                _write_range(j)
        return {"n": n, "size": size, "format": fmt, "seed": seed}

    return folder_built_once(dest, fill)


def folder_built_once(dest: Path, fill) -> Path:
    """``dest``, built once: ``fill(tmp)`` writes the files into a temporary folder beside it and
    returns a JSON-able description; the folder is marked complete and renamed, so a half-written
    folder is never used, and a concurrent builder that finished first wins."""
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / ".complete").write_text(json.dumps(fill(tmp)))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def pool_files(pool: Path) -> list[Path]:
    """The image files of a pool, ordered by image index."""
    files = [p for p in pool.rglob("img_*") if p.is_file()]
    return sorted(files, key=lambda p: p.name)


def link_subset(pool: Path, dest: Path, files: Sequence[Path]) -> Path:
    """Hard-link (copy when linking fails) ``files`` of ``pool`` into ``dest`` with the same layout."""
    for f in files:
        target = dest / f.relative_to(pool)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    return dest


def folder_bytes(path: str | os.PathLike) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------- manifests


def subset_manifest(manifest, index: Sequence[int]):
    """A manifest with only rows ``index`` (folder/CSV data, or torchvision data)."""
    index = np.asarray(index, dtype=np.int64)
    reader = manifest.reader
    new_reader = None
    if hasattr(reader, "row_side") and hasattr(reader, "row_index"):
        new_reader = type(reader)(reader.spec, reader.tv_root, reader.sides, reader.row_side[index],
                                  reader.row_index[index], getattr(reader, "_datasets", None))
    elif not hasattr(reader, "paths"):
        raise TypeError(f"cannot take a subset of a manifest read by {type(reader).__name__}")
    pick = index.tolist()
    return replace(
        manifest,
        name=f"{manifest.name}-limit{len(pick)}",
        ids=[manifest.ids[i] for i in pick],
        paths=[manifest.paths[i] for i in pick],
        labels=np.asarray(manifest.labels)[index],
        split=[manifest.split[i] for i in pick],
        digests=None if manifest.digests is None else [manifest.digests[i] for i in pick],
        reader=new_reader,
    )


def stratified_first(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` row indices spread evenly over the classes (seeded), sorted."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    take: list[int] = []
    k = 0
    while len(take) < n:
        for p in per:
            if k < len(p) and len(take) < n:
                take.append(int(p[k]))
        k += 1
    return np.sort(np.asarray(take, dtype=np.int64))


# --------------------------------------------------------------------------- memory


def _status_kb(pid: int | str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant (from /proc/*/stat parent links).

    Only processes with a larger pid than ``pid`` are read (children get later pids unless
    the pid counter wrapped around), which keeps one scan well under a millisecond on a
    busy machine instead of reading every process's stat file.
    """
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        name = entry.name
        if not name.isdigit() or int(name) <= pid:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


class TreeMemory:
    """Samples the memory of a process tree every ``interval`` s in a background thread.

    ``rss``: sum of VmRSS (/proc/PID/status) over the process and its descendants (shared
    pages, e.g. the torch libraries mapped by every DataLoader worker, are counted once per
    process: an upper bound of the physical memory used). ``pss`` (off by default): sum of
    proportional set sizes from /proc/PID/smaps_rollup; reading it walks the page tables
    under the target's mmap lock (~0.1 s per process here), which slows the measured
    process down, so it is only for occasional use. Peaks are kept overall and per named
    phase (``with mem.phase("extract"):``). The process list is refreshed every
    ``rescan`` s; VmRSS is read every ``interval`` s (about 70 us per process).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.05, pss: bool = False, rescan: float = 0.25):
        self.pid = pid or os.getpid()
        self.interval, self.want_pss = interval, pss
        self.peak = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0}
        self.phases: dict[str, dict] = {}
        self._current: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tree-memory")
        self.samples = 0
        self.last_rss_mb = 0.0
        self.rescan = rescan
        self._pids: list[int] = [self.pid]
        self._scanned = 0.0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample(self, rescan: bool = False) -> None:
        now = time.monotonic()
        if rescan or now - self._scanned >= self.rescan:
            self._pids, self._scanned = descendants(self.pid), now
        pids = self._pids
        rss = sum((_status_kb(p, "VmRSS") or 0) for p in pids) / 1024
        pss = sum((_pss_kb(p) or 0) for p in pids) / 1024 if self.want_pss else 0.0
        self.samples += 1
        self.last_rss_mb = rss
        for target in [self.peak] + ([self.phases[self._current]] if self._current in self.phases else []):
            target["rss_mb"] = max(target["rss_mb"], rss)
            target["pss_mb"] = max(target["pss_mb"], pss)
            target["processes"] = max(target["processes"], len(pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    class _Phase:
        def __init__(self, outer, name):
            self.outer, self.name = outer, name

        def __enter__(self):
            self.outer.phases.setdefault(self.name, {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0})
            self.outer._current = self.name
            self.outer.sample(rescan=True)
            return self

        def __exit__(self, *exc):
            self.outer.sample(rescan=True)
            self.outer._current = None

    def phase(self, name: str):
        return TreeMemory._Phase(self, name)


def run_child(cmd: list[str], *, timeout: float | None = None, env: dict | None = None,
              interval: float = 0.05) -> dict:
    """Run ``cmd`` (a script that prints one JSON object on its last stdout line) in a fresh
    process while sampling its process tree; returns that JSON plus ``tree_peak_rss_mb``,
    ``tree_max_processes`` and ``child_wall_s``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    mem = TreeMemory(proc.pid, interval=interval)
    with mem:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise RuntimeError(f"benchmark child timed out after {timeout} s: {' '.join(cmd)}\n{err[-4000:]}")
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode}): {' '.join(cmd)}\n{err[-4000:]}")
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    try:
        res = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"benchmark child printed no JSON: {' '.join(cmd)}\nstdout: {out[-2000:]}\n"
                           f"stderr: {err[-2000:]}") from None
    res.update(tree_peak_rss_mb=mem.peak["rss_mb"], tree_max_processes=mem.peak["processes"], child_wall_s=wall,
               memory_samples=mem.samples)
    return res


def child_memory_report() -> dict:
    """What a child process knows about its own peak memory (call at its end)."""
    import resource

    self_ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    kids_ru = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self_vmhwm_mb": vm_hwm_mb("self"), "self_maxrss_mb": self_ru,
            "largest_reaped_child_maxrss_mb": kids_ru}


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a PNG atomically (temporary file in the same folder, then rename)."""
    return _atomic_write(path, "wb", lambda fh: fig.savefig(fh, format="png", bbox_inches="tight"))


def save_log_x_plot(fig, ax, path: str | os.PathLike, *, xlabel: str, ylabel: str, title: str,
                    legend: dict | None = None) -> Path:
    """Log x axis, axis labels, grid, legend (``legend``: keywords of ``ax.legend`` on top of a
    small font at the best place) and a small title on ``ax``; then :func:`save_figure`."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(**{"fontsize": 8, "loc": "best", **(legend or {})})
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def warm_imports() -> float:
    """Import featcache's heavy modules before any timer starts; returns the seconds it took.

    A first ``extract`` in a fresh process otherwise pays ~2 s importing torchvision's model
    registry and ~1 s importing scikit-learn (for the versions recorded in the view): a
    per-process cost, reported separately as ``import_s``, not a per-image one.
    """
    t0 = time.perf_counter()
    import h5py  # noqa: F401
    import torch  # noqa: F401

    import featcache
    import featcache.extraction.engine  # noqa: F401
    import featcache.environment
    import featcache.train.fitting  # noqa: F401

    featcache.list_backbones()
    featcache.environment.versions()
    return time.perf_counter() - t0


def relpath(p: str | os.PathLike) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *[a if " " not in a else repr(a) for a in sys.argv]])
