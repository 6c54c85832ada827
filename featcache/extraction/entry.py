"""The way into stage one: the resolution index first, the engine (and torch) on a miss.

:func:`extract` is ``featcache.extract``, the CLI's ``extract`` and what ``fit-head --data``,
``predict`` and pipelines call. When the resolution index
(:mod:`featcache.store.resolutions`) knows the request's feature key, the digest cache
knows the files and the view exists, it answers at once without importing torch or
torchvision; so does a view of rows the store holds already (e.g. ``predict`` on images
seen before), written without the model. Anything else (a miss, a changed weights file
or library, rows to compute, a torchrun rank) goes to :func:`featcache.extraction.engine.extract`, which resolves the
identity in full and remembers it in the index.
"""
from __future__ import annotations

import os
import time
from typing import Any

from featcache.extraction.augment import augmented_manifest, identity_extra
from featcache.extraction.planning import check_run_options, plan_rows, rows_to_keep, write_dataset_view
from featcache.extraction.report import ExtractResult, cache_hit_result, new_timings
from featcache.extraction.sources import Manifest, manifest_of
from featcache.store.featureset import FeatureSet, FeatureStore
from featcache.store.resolutions import Resolution, ResolutionIndex, build_request

#: extract()'s identity options and the device, with its defaults
IDENTITY_DEFAULTS = {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "layer": "penultimate", "pool": "avg",
                     "image_size": None, "precision": "auto", "dtype": "float32", "decode": "workers", "device": "auto"}
#: extract() options that read the data (passed to the manifest when given)
DATA_OPTIONS = ("path_column", "label_column", "root", "split_column", "labelled", "tv_split", "download")


def extract(data: str | Manifest, **options: Any) -> ExtractResult:
    """:func:`featcache.extraction.engine.extract` (same arguments), answered from the cache without
    torch when the resolution index, the digest cache and an existing view allow it."""
    result, manifest = answer_from_cache(data, options)
    if result is not None:
        return result
    # torch: only what the cache cannot answer needs the engine
    from featcache.extraction.engine import extract as run

    return run(manifest if manifest is not None else data, **options)


def index_request(options: dict, extra: dict | None = None) -> dict:
    """The resolution-index request of extract() ``options``: what the engine remembers for them."""
    opts = {k: options.get(k, default) for k, default in IDENTITY_DEFAULTS.items()}
    return build_request({**opts, "extra": extra or options.get("_extra")})


def resolve_key(options: dict) -> str:
    """The feature key extract() ``options`` give: from the index, else resolved in full (and remembered)."""
    store = FeatureStore(options.get("cache_dir"))
    res = ResolutionIndex(store.root).lookup(index_request(options))
    if res is not None:
        return res.key
    # torch: a full resolution builds weights objects
    from featcache.extraction.engine import resolve, resolve_device

    opts = {k: options.get(k, default) for k, default in IDENTITY_DEFAULTS.items()}
    return resolve({**opts, "extra": options.get("_extra")}, resolve_device(opts["device"]), store.root)[0].key


def answer_from_cache(data: str | Manifest, options: dict) -> tuple[ExtractResult | None, Manifest | None]:
    """(the cache hit's result or None, the manifest read on the way or None)."""
    check_run_options(**{k: options[k] for k in ("on_error", "batch_size", "augment") if k in options})
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None, None  # torchrun: every rank takes the engine's path, where rank 0 plans for all
    t_start = time.perf_counter()
    store = FeatureStore(options.get("cache_dir"))
    index = ResolutionIndex(store.root)
    plain = _known_set(store, index, index_request(options))
    if plain is None:
        return None, None
    timings = new_timings()
    manifest = manifest_of(data, store.root, **{k: options[k] for k in DATA_OPTIONS if k in options})
    manifest.compute_digests(store.digest_cache)
    timings["digest_s"] = time.perf_counter() - t_start
    on_error = options.get("on_error", "fail")
    result = _answer(*plain, manifest, on_error, timings, t_start)
    copies = options.get("augment", 0)
    if result is None or not copies:
        return result, manifest
    seed = options.get("augment_seed", 0)
    aug = _known_set(store, index, index_request(options, identity_extra(seed)))
    aug_result = (_answer(*aug, augmented_manifest(manifest, copies, seed), on_error, new_timings(), t_start)
                  if aug else None)
    return (result.with_augmented(aug_result, copies) if aug_result else None), manifest


def _known_set(store: FeatureStore, index: ResolutionIndex, request: dict) -> tuple[FeatureSet, Resolution] | None:
    res = index.lookup(request)
    fs = store.open_key(res.key) if res is not None else None
    return (fs, res) if fs is not None else None


def _answer(fs: FeatureSet, res: Resolution, manifest: Manifest, on_error: str, timings: dict,
            t_start: float) -> ExtractResult | None:
    """The result when every row of ``manifest`` is in the store (its view written if missing), else None."""
    view = fs.view_path(manifest.name, manifest.fingerprint())
    common = dict(feature_key=fs.key, data=manifest.name, identity=fs.identity.to_dict(),
                  ignored=len(manifest.ignored), device=res.device)
    with fs.lock(shared=True):  # as the engine plans: `cache gc` does not merge under a reader
        hit, todo, skipped = plan_rows(fs, manifest, view, on_error)
        if hit:
            return cache_hit_result(view, timings, t_start, common)
        if todo:
            return None  # rows to compute: the engine's job
        t0 = time.perf_counter()
        keep, skipped = rows_to_keep(manifest, skipped)
        write_dataset_view(fs, view, manifest, keep, skipped, weights_path=res.weights_path)
    fs.compact()
    timings["view_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    return ExtractResult(view=str(view), rows=len(keep), dim=fs.dim() or 0, extracted=0, reused=len(keep),
                         cache_hit=False, model_built=False, skipped=skipped, timings=timings, **common)
