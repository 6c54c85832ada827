"""Stage one: run a frozen backbone over a dataset and store its features.

DataLoader workers decode and transform images; the main thread runs the model
under ``torch.inference_mode`` (AMP and channels_last on CUDA); a single writer
thread appends rows to the store, so decode, forward and write overlap. The
identity is computed and the store consulted before the model is built: a
dataset whose view exists returns at once, and only rows the store lacks are
computed.
"""
from __future__ import annotations

import inspect
import os
import queue
import sys
import threading
import time

import torch

from featcache.extraction import distributed
from featcache.extraction.planning import check_run_options, plan_rows, rows_to_keep, write_dataset_view
from featcache.extraction.report import ExtractResult, cache_hit_result, new_timings
from featcache.extraction.sources import Manifest, manifest_of
from featcache.extraction.decoders import DECODERS
from featcache.extraction.device_decode import decode_jpegs
from featcache.errors import FeatcacheError, ImageDecodeError, Interrupted, UnknownNameError
from featcache.faults import failpoint
from featcache.extraction.images import ImageRows, collate
from featcache.store.keys import FeatureIdentity, resolve_identity
from featcache.extraction.layers import FeatureExtractor
from featcache.store.featureset import FeatureSet, FeatureStore
from featcache.store.resolutions import Resolution, ResolutionIndex, build_request


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UnknownNameError("device", device, ["auto", "cpu", "cuda", "cuda:0", "mps"]) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FeatcacheError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def default_workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, n - 1 if n > 2 else n))


class _Writer(threading.Thread):
    """The single writer: takes (digests, features) batches off a bounded queue."""

    def __init__(self, fs: FeatureSet, flush_rows: int, flush_seconds: float):
        super().__init__(daemon=True, name="featcache-writer")
        self.fs, self.flush_rows, self.flush_seconds = fs, flush_rows, flush_seconds
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.shards = None
        self.error: BaseException | None = None
        self.busy = 0.0

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                break
            if self.error is not None:
                continue  # drain after a failure
            t0 = time.perf_counter()
            try:
                digests, feats = item
                if self.shards is None:
                    self.shards = self.fs.writer(feats.shape[1], flush_rows=self.flush_rows,
                                                 flush_seconds=self.flush_seconds)
                self.shards.append(digests, feats)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.error = e
                if self.shards is not None:
                    self.shards.abort()
            self.busy += time.perf_counter() - t0
        if self.error is None and self.shards is not None:
            t0 = time.perf_counter()
            try:
                self.shards.flush()
            except BaseException as e:  # noqa: BLE001
                self.error = e
            self.busy += time.perf_counter() - t0

    def put(self, digests, feats) -> None:
        if self.error is not None:
            raise self._as_error()
        self.q.put((digests, feats))

    def finish(self) -> int:
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise self._as_error()
        return self.shards.rows_published if self.shards else 0

    def _as_error(self) -> FeatcacheError:
        e = self.error
        if isinstance(e, FeatcacheError):
            return e
        return FeatcacheError(f"writing rows to {self.fs.rows_dir} failed ({type(e).__name__}: {e}); rows "
                              "flushed before are kept: free space or fix permissions and re-run the same command")


def _autocast(device: torch.device, precision: str):
    if precision == "float32":
        import contextlib

        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# CPU kernels give a row the same bits in every batch of at least this many rows, but take
# other paths for fewer (BLAS GEMM and oneDNN convolutions; measured on vgg16, resnet50,
# densenet121, efficientnet_b0, mobilenet_v3_large and convnext_tiny: batches of 1-15 rows
# differ from a batch of 64 by up to 3e-5, batches of 16-63 are identical to it).
EXACT_ROWS = 16


def pad_batch(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Repeat the last image until a short batch has ``min(batch_size, EXACT_ROWS)`` rows.

    So a row's features do not depend on which rows shared its batch: resumed, grown and
    torchrun runs give the values of an uninterrupted single-process run bit for bit (same
    ``--batch-size``), at a cost of at most ``EXACT_ROWS - 1`` padded images per run and rank."""
    short = min(batch_size, EXACT_ROWS) - images.shape[0]
    if short <= 0:
        return images
    return torch.cat([images, images[-1:].expand(short, *images.shape[1:])])


def _merge(pos, images, bad, jpeg_pos, jpeg_images, jpeg_bad, device: torch.device):
    """Worker-decoded rows + device-decoded JPEG rows -> one batch on the device."""
    parts = [t.to(device, non_blocking=True) for t in (images, jpeg_images) if t is not None]
    merged = torch.cat(parts) if len(parts) > 1 else (parts[0] if parts else None)
    return torch.cat([pos, jpeg_pos]), merged, [*bad, *jpeg_bad]


def run_backbone(extractor: torch.nn.Module, reader, positions: list[int], digests: list[str],
                 transform, writer: _Writer, *, device: torch.device, precision: str, batch_size: int,
                 workers: int, on_error: str, ids: list[str], progress: bool, timings: dict,
                 decode: str = "workers", resize: int | None = None) -> list[dict]:
    """Decode -> forward -> writer for the given rows; returns the skipped files."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(
        ImageRows(reader, positions, transform, decode=decode, resize=resize), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )
    digest_at = dict(zip(positions, digests))
    skipped: list[dict] = []
    channels_last = device.type == "cuda"
    bar = tqdm(total=len(positions), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               desc="extract", smoothing=0.1)
    it = iter(loader)
    try:
        with torch.inference_mode():
            while True:
                t0 = time.perf_counter()
                try:
                    pos, images, bad, dsec, jpegs = next(it)
                except StopIteration:
                    break
                timings["wait_s"] += time.perf_counter() - t0
                timings["decode_s"] += dsec
                if jpegs:
                    t1 = time.perf_counter()
                    pos, images, bad = _merge(pos, images, bad, *decode_jpegs(jpegs, transform, device), device)
                    timings["device_decode_s"] = timings.get("device_decode_s", 0.0) + time.perf_counter() - t1
                for p, err in bad:
                    if on_error == "fail":
                        raise ImageDecodeError(
                            f"cannot decode {ids[p]!r} ({err}); fix or remove the file, or pass "
                            "--on-error skip to leave it out (skipped files are listed in the view)")
                    skipped.append({"id": ids[p], "error": err})
                if images is not None:
                    t1 = time.perf_counter()
                    n = images.shape[0]
                    x = pad_batch(images, batch_size).to(device, non_blocking=True)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with _autocast(device, precision):
                        feats = extractor(x)
                    feats = feats[:n].float().cpu().numpy()
                    timings["forward_s"] += time.perf_counter() - t1
                    writer.put([digest_at[int(p)] for p in pos], feats)
                bar.update(len(pos) + len(bad))
                failpoint("batch")
    finally:
        bar.close()
        del it
    return skipped


def resolve(options: dict, dev: torch.device, index_root: str | os.PathLike | None = None):
    """Full resolution of the identity ``options`` (resolution-index request options, see
    featcache.store.resolutions.REQUEST_OPTIONS) on device ``dev``
    -> (FeatureIdentity, BackboneEntry, WeightsChoice, precision); remembered in the
    resolution index of store ``index_root`` when given."""
    request = build_request(options) if index_root is not None else None  # a weights file's stat before its digest
    prec = resolve_precision(options["precision"], dev)
    ident, entry, choice = resolve_identity(
        options["backbone"], weights=options["weights"], layer=options["layer"], pool=options["pool"],
        image_size=options["image_size"], precision=prec, dtype=options["dtype"], extra=options["extra"],
        decode=options["decode"])
    if request is not None:
        ResolutionIndex(index_root).remember(request, Resolution(ident.key, str(dev), choice.path, choice.digest))
    return ident, entry, choice, prec


def extract(
    data: str | Manifest,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str = "DEFAULT",
    layer: str = "penultimate",
    pool: str = "avg",
    image_size: int | None = None,
    precision: str = "auto",
    dtype: str = "float32",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    on_error: str = "fail",
    path_column: str = "path",
    label_column: str | None = "label",
    root: str | None = None,
    split_column: str | None = None,
    labelled: bool = True,
    tv_split: str = "all",
    download: bool = False,
    flush_rows: int = 8192,
    flush_seconds: float = 60.0,
    progress: bool = False,
    augment: int = 0,
    augment_seed: int = 0,
    decode: str = "workers",
    _extra: dict | None = None,
) -> ExtractResult:
    """Extract (or reuse) the features of ``data``; returns where the view is and what it cost.

    ``augment=N`` also extracts N seeded augmented copies of every training image
    into a feature set of their own (see featcache.extraction.augment); the result's
    ``augmented`` holds that view's path and counts.

    ``decode="device"`` decodes JPEG files with torchvision.io on ``device`` (nvJPEG on
    CUDA) instead of PIL in the workers; it is part of the feature key.
    """
    check_run_options(on_error=on_error, batch_size=batch_size, augment=augment)
    if augment:
        from featcache.extraction.augment import augmented_manifest, identity_extra

        args = locals()
        kw = {k: args[k] for k in _EXTRACT_PARAMS if k not in ("data", "augment", "augment_seed")}
        store = FeatureStore(cache_dir)
        # read the data and digest it once: the plain and the augmented extraction share the manifest
        base = manifest_of(data, store.root, path_column=path_column, label_column=label_column, root=root,
                            split_column=split_column, labelled=labelled, tv_split=tv_split, download=download)
        base.compute_digests(store.digest_cache)
        plain = extract(base, **kw)
        aug = extract(augmented_manifest(base, augment, augment_seed), **{**kw, "_extra": identity_extra(augment_seed)})
        return plain.with_augmented(aug, augment)
    t_start = time.perf_counter()
    dev = resolve_device(device)
    dist = distributed.from_env(dev)
    dev = distributed.rank_device(dev, dist)
    store = FeatureStore(cache_dir)
    ident, entry, choice, prec = resolve(
        dict(backbone=backbone, weights=weights, layer=layer, pool=pool, image_size=image_size, precision=precision,
             dtype=dtype, decode=decode, device=device, extra=_extra), dev, store.root if dist.world == 1 else None)
    manifest = manifest_of(data, store.root, path_column=path_column, label_column=label_column, root=root,
                            split_column=split_column, labelled=labelled, tv_split=tv_split, download=download)
    timings = new_timings()
    t0 = time.perf_counter()
    manifest.compute_digests(store.digest_cache)
    timings["digest_s"] = time.perf_counter() - t0
    fs = store.open(ident)
    view = fs.view_path(manifest.name, manifest.fingerprint())
    common = dict(feature_key=fs.key, data=manifest.name, identity=ident.to_dict(), ignored=len(manifest.ignored),
                  device=str(dev))
    # a shared lock for the whole run: `cache gc` (exclusive) leaves a set alone while rows are
    # being added to it, as they are in no view yet
    with fs.lock(shared=True):
        # rank 0 decides (a cache hit, or which rows are missing) so that every rank agrees
        hit, todo, skipped = dist.broadcast(plan_rows(fs, manifest, view, on_error) if dist.is_main else None)
        if hit:
            return cache_hit_result(view, timings, t_start, common)

        mine = todo[dist.rank::dist.world]
        n_workers = default_workers() if workers is None else workers
        extracted, built, bad = 0, False, []
        if mine:
            t0 = time.perf_counter()
            extractor = FeatureExtractor(entry.build(choice), layer=layer, pool=pool).to(dev)
            if dev.type == "cuda":
                extractor = extractor.to(memory_format=torch.channels_last)
            built = True
            timings["build_s"] = time.perf_counter() - t0
            writer = _Writer(fs, flush_rows, flush_seconds)
            writer.start()
            t0 = time.perf_counter()
            try:
                bad = run_backbone(
                    extractor, manifest.reader, mine, [manifest.digests[i] for i in mine],
                    ident_transform(ident), writer, device=dev, precision=prec, batch_size=batch_size,
                    workers=n_workers, on_error=on_error, ids=manifest.ids,
                    progress=progress and dist.is_main, timings=timings, decode=decode,
                    resize=int(ident.preprocess["resize"]))
            except KeyboardInterrupt:
                saved = writer.finish()
                raise Interrupted(f"interrupted: {saved} new rows saved in {fs.key}; run the same command again "
                                  "to resume from there") from None
            except BaseException:
                writer.finish()  # keep what was computed: the next run resumes from it
                raise
            extracted = writer.finish()
            timings["write_s"] = writer.busy
            timings["extract_s"] = time.perf_counter() - t0
        ranks = dist.gather((extracted, built, bad))
        extracted = sum(r[0] for r in ranks)
        built = any(r[1] for r in ranks)
        skipped = skipped + [b for r in ranks for b in r[2]]
        t0 = time.perf_counter()
        keep, skipped = rows_to_keep(manifest, skipped)
        if dist.is_main:
            write_dataset_view(fs, view, manifest, keep, skipped, weights_path=choice.path, world=dist.world)
    dist.barrier()  # every rank has let go of the set: rank 0 may merge its small shards
    if dist.is_main:
        fs.compact()
    timings["view_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    return ExtractResult(view=str(view), rows=len(keep), dim=fs.dim() or 0, extracted=extracted,
                         reused=len(keep) - extracted, cache_hit=False, model_built=built, skipped=skipped,
                         timings=timings, workers=n_workers, **common)


_EXTRACT_PARAMS = list(inspect.signature(extract).parameters)


def ident_transform(ident: FeatureIdentity):
    from featcache.extraction.backbones.registry import Preprocess

    p = dict(ident.preprocess)
    p["mean"], p["std"] = tuple(p["mean"]), tuple(p["std"])
    return Preprocess(**p).build()


def options_from_identity(identity: dict, weights_path: str | None = None) -> dict:
    """extract() keyword arguments that reproduce a stored identity (checked by comparing keys)."""
    from featcache.extraction.backbones.registry import get_backbone

    entry = get_backbone(identity["backbone"])
    label = identity["weights"]
    if label.startswith("file:"):
        if not weights_path or not os.path.isfile(weights_path):
            raise FeatcacheError(f"these features came from the local weights file {label[5:]!r} "
                                 f"({weights_path or 'path unknown'}), which is not there now; pass it again")
        weights = weights_path
    else:
        weights = label.split(".")[-1]
    default = entry.resolve_weights(weights).preprocess.to_dict()
    pre = identity["preprocess"]
    image_size = None if pre == default else int(pre["crop"])
    return dict(backbone=identity["backbone"], weights=weights, layer=identity["layer"], pool=identity["pool"],
                image_size=image_size, precision=identity["precision"], dtype=identity["dtype"],
                decode={v: k for k, v in DECODERS.items()}.get(identity.get("decoder"), "workers"))
