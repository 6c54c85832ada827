"""What an extraction has to do, decided without torch: checked options, rows to compute, the view.

The engine (:mod:`featcache.extraction.engine`) plans with these before building a
model, and the cache's fast path (:mod:`featcache.extraction.entry`) answers with them
when no row is missing: a view of rows the store holds is written without torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from featcache.errors import FeatcacheError, ImageDecodeError, UnknownNameError
from featcache.extraction.manifest import Manifest
from featcache.specs import COMPUTE_MODES, ON_ERROR, RunSpec
from featcache.store.featureset import FeatureSet

def check_run(run: RunSpec) -> None:
    """The RunSpec values that cannot work, as errors naming the option."""
    if run.on_error not in ON_ERROR:
        raise UnknownNameError("--on-error policy", run.on_error, ON_ERROR)
    if run.batch_size < 1:
        raise FeatcacheError(f"--batch-size {run.batch_size}: expected a positive integer")
    if run.compute not in COMPUTE_MODES:
        raise UnknownNameError("--compute mode", run.compute, COMPUTE_MODES)


def plan_rows(fs: FeatureSet, manifest: Manifest, view, on_error: str):
    """(cache hit?, positions to extract, files skipped already) for this run."""
    if view.is_file():
        return True, [], []
    skipped = []
    for i, d in enumerate(manifest.digests):
        if d is None:
            if on_error == "fail":
                raise ImageDecodeError(f"cannot read {manifest.ids[i]!r}; check the file's permissions, or "
                                       "pass --on-error skip to leave it out")
            skipped.append({"id": manifest.ids[i], "error": "unreadable file"})
    index = fs.row_index()
    first: dict[str, int] = {}
    for i, d in enumerate(manifest.digests):
        if d is not None and d not in index and d not in first:
            first[d] = i
    return False, sorted(first.values()), skipped


def rows_to_keep(manifest: Manifest, skipped: list[dict]) -> tuple[list[int], list[dict]]:
    """Positions that go into the view; content that failed to decode fails at every position holding it."""
    position = {id_: i for i, id_ in enumerate(manifest.ids)}
    bad_digests = {manifest.digests[position[s["id"]]] for s in skipped} - {None}
    skipped = list(skipped)
    skipped_ids = {s["id"] for s in skipped}
    for id_, d in zip(manifest.ids, manifest.digests):
        if d in bad_digests and id_ not in skipped_ids:
            skipped.append({"id": id_, "error": "same content as a file that could not be decoded"})
            skipped_ids.add(id_)
    return [i for i, id_ in enumerate(manifest.ids) if id_ not in skipped_ids], skipped


def write_dataset_view(fs: FeatureSet, view: Path, manifest: Manifest, keep: list[int], skipped: list[dict], *,
                       weights_path: str | None, world: int = 1) -> None:
    """Publish the view of ``manifest``'s rows at positions ``keep`` (all in the store) at ``view``."""
    fs.write_view(
        view, [manifest.digests[i] for i in keep], ids=[manifest.ids[i] for i in keep],
        labels=manifest.labels[keep] if len(keep) else np.zeros(0, np.int64),
        split=[manifest.split[i] for i in keep], class_names=manifest.class_names,
        attrs={"weights_path": weights_path or "", "data_source": manifest.source, "data_root": manifest.root,
               "data_name": manifest.name, "fingerprint": manifest.fingerprint(), "skipped": skipped,
               "ignored_files": len(manifest.ignored), "world_size": world})
