"""What an extraction did (:class:`ExtractResult`), and the answer of a cache hit; no torch.

Kept apart from the engine so that a cache hit answered from the resolution index
(:mod:`featcache.extraction.entry`) builds its result without importing torch.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from featcache.store.views import load_features


#: the phases of an extraction, in seconds (ExtractResult.timings)
TIMINGS = ("digest_s", "build_s", "wait_s", "decode_s", "forward_s", "write_s", "view_s", "extract_s", "total_s")


def new_timings() -> dict:
    return dict.fromkeys(TIMINGS, 0.0)


@dataclass
class ExtractResult:
    view: str
    feature_key: str
    data: str
    rows: int
    dim: int
    extracted: int
    reused: int
    cache_hit: bool
    model_built: bool
    skipped: list[dict] = field(default_factory=list)
    ignored: int = 0
    timings: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)
    device: str = "cpu"
    augmented: dict | None = None
    workers: int = 0  # DataLoader decode workers of this run (0: decoding in the main process)
    levers: str = "plain"  # inference levers the rows were computed with (featcache.extraction.levers)
    heap_reuse: bool = False  # freed memory kept for the next batch (featcache.allocator): speed only

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        t = self.timings
        head = f"{self.data}: {self.rows} rows x {self.dim} [{self.feature_key}]"
        if self.cache_hit:
            return (f"cache hit: {head} in {t.get('total_s', 0):.2f} s, no model built -> {self.view}"
                    + self._augmented_summary())
        rate = self.extracted / t["extract_s"] if t.get("extract_s") else 0.0
        s = (f"{head}: extracted {self.extracted}, reused {self.reused}, skipped {len(self.skipped)} "
             f"in {t.get('total_s', 0):.1f} s ({rate:.1f} img/s on {self.device}, {self._levers()}; "
             f"decode {t.get('decode_s', 0):.1f} s "
             f"{f'in {self.workers} workers' if self.workers else 'in the main process'}{self._device_decode()}, "
             f"waiting on data {t.get('wait_s', 0):.1f} s, "
             f"forward {t.get('forward_s', 0):.1f} s, write {t.get('write_s', 0):.1f} s) -> {self.view}")
        if self.ignored:
            s += f"; {self.ignored} non-image files ignored"
        return s + self._augmented_summary()

    def _levers(self) -> str:
        setup, export = self.timings.get("levers_s"), self.timings.get("export_s")
        kept = " from the graph kept by an earlier run" if export == 0.0 else ""  # None: no export lever
        return (f"levers {self.levers}" + (f" set up in {setup:.1f} s{kept}" if setup else "")
                + (", freed memory reused" if self.heap_reuse else ""))

    def _device_decode(self) -> str:
        s = self.timings.get("device_decode_s")
        return f" + {s:.1f} s of JPEG on {self.device}" if s is not None else ""

    def with_augmented(self, aug: "ExtractResult", copies: int) -> "ExtractResult":
        """This (plain) result, noting the augmented copies' extraction ``aug``."""
        self.augmented = {"view": aug.view, "feature_key": aug.feature_key, "copies": copies, "rows": aug.rows,
                          "extracted": aug.extracted, "reused": aug.reused, "cache_hit": aug.cache_hit}
        self.model_built = self.model_built or aug.model_built
        return self

    def _augmented_summary(self) -> str:
        a = self.augmented
        if not a:
            return ""
        return (f"\naugmented: {a['rows']} rows ({a['copies']} per training image) [{a['feature_key']}]: extracted "
                f"{a['extracted']}, reused {a['reused']} -> {a['view']}")


def cache_hit_result(view, timings: dict, t_start: float, common: dict) -> ExtractResult:
    """The answer of a cache hit: the view exists; its rows, dim and skipped files are read from it."""
    f = load_features(view, mmap=True)
    rows, dim = f.features.shape
    skipped = json.loads(f.attrs.get("skipped", "[]"))
    f.features.file.close()
    timings["total_s"] = time.perf_counter() - t_start
    return ExtractResult(view=str(view), rows=rows, dim=dim, extracted=0, reused=rows, cache_hit=True,
                         model_built=False, skipped=skipped, timings=timings, **common)
