"""The way into stage one: the resolution index first, the engine (and torch) on a miss.

:func:`extract` is ``featcache.extract``, the CLI's ``extract`` and what ``fit-head --data``,
``predict`` and pipelines call. When the resolution index
(:mod:`featcache.store.resolutions`) knows the BackboneSpec's feature key, the digest cache
knows the files and the view exists, it answers at once without importing torch or
torchvision; so does a view of rows the store holds already (e.g. ``predict`` on images
seen before), written without the model. Anything else (a miss, a changed weights file
or library, rows to compute, a torchrun rank) goes to
:func:`featcache.extraction.engine.extract`, which resolves the identity in full and
remembers it in the index. :func:`resolve_key` is the same lookup for a key alone.
"""
from __future__ import annotations

import os
import time

from featcache.extraction.augment import augmented_manifest, identity_extra
from featcache.extraction.manifest import Manifest
from featcache.extraction.planning import check_run, plan_rows, rows_to_keep, write_dataset_view
from featcache.extraction.report import ExtractResult, cache_hit_result, new_timings
from featcache.extraction.sources import manifest_of
from featcache.specs import BackboneSpec, DataSpec, RunSpec, specs_from_keywords
from featcache.store.featureset import FeatureSet, FeatureStore
from featcache.store.resolutions import Resolution, ResolutionIndex, spec_request


def extract(data: str | DataSpec | Manifest, backbone: BackboneSpec | str | None = None,
            run: RunSpec | None = None, **options) -> ExtractResult:
    """:func:`featcache.extraction.engine.extract` (same arguments), answered from the cache without
    torch when the resolution index, the digest cache and the stored rows allow it."""
    data, spec, run = specs_from_keywords(data, backbone, run, **options)
    result, manifest = answer_from_cache(data, spec, run)
    if result is not None:
        return result
    # torch: only what the cache cannot answer needs the engine
    from featcache.extraction.engine import extract as extract_features

    return extract_features(manifest if manifest is not None else data, spec, run)


def resolve_key(spec: BackboneSpec, run: RunSpec) -> str:
    """The feature key of ``spec`` on ``run.device``: from the index, else resolved in full (and remembered)."""
    store = FeatureStore(run.cache_dir)
    res = ResolutionIndex(store.root).lookup(spec_request(spec, run.device))
    if res is not None:
        return res.key
    # torch: a full resolution builds weights objects
    from featcache.extraction.engine import resolve_remembered

    return resolve_remembered(spec, run.device, index_root=store.root).identity.key


def answer_from_cache(data: DataSpec | Manifest, spec: BackboneSpec, run: RunSpec
                      ) -> tuple[ExtractResult | None, Manifest | None]:
    """(the result when the cache answers, else None; the manifest read on the way, or None)."""
    check_run(run)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or spec.augment < 0:
        return None, None  # torchrun: rank 0 plans for all in the engine; a bad --augment: its error there
    t_start = time.perf_counter()
    store = FeatureStore(run.cache_dir)
    index = ResolutionIndex(store.root)
    plain = store.open_resolved(index, spec_request(spec, run.device))
    if plain is None:
        return None, None
    timings = new_timings()
    manifest = data if isinstance(data, Manifest) else manifest_of(data, store.root)
    manifest.compute_digests(store.digest_cache)
    timings["digest_s"] = time.perf_counter() - t_start
    result = _answer(*plain, manifest, run.on_error, timings, t_start)
    if result is None or not spec.augment:
        return result, manifest
    extra = identity_extra(spec.augment_seed)
    aug = store.open_resolved(index, spec_request(spec, run.device, extra))
    copies = augmented_manifest(manifest, spec.augment, spec.augment_seed)
    aug_result = _answer(*aug, copies, run.on_error, new_timings(), time.perf_counter()) if aug else None
    return (result.with_augmented(aug_result, spec.augment) if aug_result else None), manifest


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
