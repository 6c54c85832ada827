"""Stage one: run a frozen backbone over a dataset and store its features.

DataLoader workers decode and transform images; the main thread runs the model
under ``torch.inference_mode`` (AMP and channels_last on CUDA); a single writer
thread appends rows to the store, so decode, forward and write overlap. The
identity is computed and the store consulted before the model is built: a
dataset whose view exists returns at once, and only rows the store lacks are
computed.
"""
from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from featcache import allocator
from featcache.devices import resolve_device
from featcache.environment import usable_cores
from featcache.errors import FeatcacheError, ImageDecodeError, Interrupted
from featcache.extraction import distributed, levers
from featcache.extraction.augment import augmented_manifest, identity_extra
from featcache.extraction.backbones.registry import Preprocess
from featcache.extraction.decoders import decode_mode
from featcache.extraction.device_decode import decode_jpegs
from featcache.extraction.identity import RememberedIdentity, ResolvedIdentity, resolve_identity, with_extra
from featcache.extraction.images import Batch, ImageRows, batch_chunks, collate, join_rows, merge_chunks
from featcache.extraction.layers import FeatureExtractor
from featcache.extraction.manifest import Manifest
from featcache.extraction.planning import check_run, plan_rows, rows_to_keep, write_dataset_view
from featcache.extraction.report import ExtractResult, cache_hit_result, new_timings
from featcache.extraction.sources import manifest_of
from featcache.faults import failpoint
from featcache.specs import BackboneSpec, DataSpec, RunSpec, specs_from_keywords
from featcache.store.featureset import FeatureSet, FeatureStore
from featcache.store.keys import FeatureIdentity
from featcache.store.resolutions import Resolution, ResolutionIndex, spec_request



def default_workers() -> int:
    n = usable_cores()
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


def autocast(device: torch.device, precision: str):
    if precision == "float32":
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
    return torch.cat([pos, jpeg_pos]), join_rows((images, jpeg_images), device), [*bad, *jpeg_bad]


class Decoding:
    """The batches of rows ``positions``, decoded by ``workers`` processes that start at once.

    Started before the model is built and its levers prepared, so that the workers' first
    batches are decoded during that set-up (0.5 s for resnet18 on 2 cores). The first and the
    last batches are decoded in chunks, one per worker (:func:`batch_chunks`), and joined here
    into the rows of the same batch. ``close()`` stops the workers; call it however the run ends.
    """

    def __init__(self, reader, positions: list[int], transform, *, device: torch.device, batch_size: int,
                 workers: int, decode: str = "workers", resize: int | None = None):
        batches = batch_chunks(len(positions), batch_size, max(1, workers))
        loader = torch.utils.data.DataLoader(
            ImageRows(reader, positions, transform, decode=decode, resize=resize),
            batch_sampler=[chunk for chunks in batches for chunk in chunks], num_workers=workers,
            collate_fn=collate, pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
        )
        self._chunks = iter(loader)
        self._counts = iter([len(chunks) for chunks in batches])
        self._device = device

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        count = next(self._counts)
        return merge_chunks([next(self._chunks) for _ in range(count)], self._device)

    def close(self) -> None:
        self._chunks = None  # the loader's iterator shuts its workers down when released


def run_backbone(extractor: torch.nn.Module, batches, positions: list[int], digests: list[str],
                 transform, writer: _Writer, *, device: torch.device, precision: str, batch_size: int,
                 on_error: str, ids: list[str], progress: bool, timings: dict,
                 compute: levers.Levers = levers.PLAIN) -> list[dict]:
    """Forward the decoded ``batches`` (:class:`Decoding`) of rows ``positions`` -> writer;
    returns the skipped files."""
    digest_at = dict(zip(positions, digests))
    skipped: list[dict] = []
    channels_last = device.type == "cuda" or compute.channels_last
    bar = tqdm(total=len(positions), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               desc="extract", smoothing=0.1)
    try:
        with torch.inference_mode():
            while True:
                t0 = time.perf_counter()
                try:
                    pos, images, bad, dsec, jpegs = next(batches)
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
                    with autocast(device, precision):
                        feats = extractor(x)
                    feats = feats[:n].float().cpu().numpy()
                    timings["forward_s"] += time.perf_counter() - t1
                    writer.put([digest_at[int(p)] for p in pos], feats)
                bar.update(len(pos) + len(bad))
                failpoint("batch")
    finally:
        bar.close()
    return skipped


def extract(data: str | DataSpec | Manifest, backbone: BackboneSpec | str | None = None,
            run: RunSpec | None = None, **options) -> ExtractResult:
    """Extract (or reuse) the features of ``data``; returns where the view is and what it cost.

    ``data`` is a source (folder, CSV, ``builtin:NAME``, ``torchvision:NAME``), a DataSpec or a
    loaded Manifest; ``backbone`` a BackboneSpec or a backbone name; ``run`` a RunSpec.
    ``options`` are fields of the three specs applied on top (``backbone="resnet18",
    image_size=64, cache_dir=...``), see :func:`featcache.specs.specs_from_keywords`.

    ``augment=N`` also extracts N seeded augmented copies of every training image into a
    feature set of their own (see featcache.extraction.augment); the result's ``augmented``
    holds that view's path and counts. ``decode="device"`` decodes JPEG files with
    torchvision.io on the device (nvJPEG on CUDA) instead of PIL in the workers; it is part
    of the feature key.
    """
    data, spec, run = specs_from_keywords(data, backbone, run, **options)
    t_start = time.perf_counter()
    check_run(run)
    dev = resolve_device(run.device)
    dist = distributed.from_env(dev)
    dev = distributed.rank_device(dev, dist)
    store = FeatureStore(run.cache_dir)
    resolved = resolve_for_run(spec, run.device, dev, store, dist)
    manifest = data if isinstance(data, Manifest) else manifest_of(data, store.root)
    t0 = time.perf_counter()
    manifest.compute_digests(store.digest_cache)
    digest_s = time.perf_counter() - t0
    job = _Job(store=store, run=run, device=dev, dist=dist)
    result = job.extract_set(manifest, resolved, t_start, digest_s)
    if spec.augment:
        extra = identity_extra(spec.augment_seed)
        aug_resolved = with_extra(resolved, extra)
        if dist.world == 1:
            remember(store.root, spec_request(spec, run.device, extra), aug_resolved, dev)
        aug = job.extract_set(augmented_manifest(manifest, spec.augment, spec.augment_seed), aug_resolved,
                              time.perf_counter())
        result.with_augmented(aug, spec.augment)
    return result


def resolve_for_run(spec: BackboneSpec, device: str, dev: torch.device, store: FeatureStore,
                    dist: distributed.Dist) -> ResolvedIdentity | RememberedIdentity:
    """The identity of ``spec`` for this run: the resolution index's answer when the store holds that
    set (the registry, and torchvision with it, are loaded only if the model is built: a grown set
    with a kept ONNX Runtime graph never loads them), else resolved in full and remembered. One
    process remembers its resolutions; torchrun ranks resolve in full on their own devices, and an
    augmented run resolves in full for its second set."""
    if dist.world == 1 and not spec.augment:
        index = ResolutionIndex(store.root)
        known = store.open_resolved(index, spec_request(spec, device))
        if known is not None:
            fs, res = known
            return RememberedIdentity(fs.identity, res.weights_path, spec, dev, str(index.path))
    return resolve_remembered(spec, device, dev, store.root if dist.world == 1 else None)


def resolve_remembered(spec: BackboneSpec, device: str, dev: torch.device | None = None,
                       index_root: str | os.PathLike | None = None) -> ResolvedIdentity:
    """:func:`resolve_identity` of ``spec`` for the ``--device`` value ``device`` (resolved: ``dev``),
    remembered in the resolution index of the store ``index_root`` when given."""
    request = spec_request(spec, device) if index_root is not None else None  # a weights file's stat first
    resolved = resolve_identity(spec, device=dev if dev is not None else device)
    if request is not None:
        remember(index_root, request, resolved, dev if dev is not None else resolve_device(device))
    return resolved


def remember(index_root: str | os.PathLike, request: dict, resolved: ResolvedIdentity, dev: torch.device) -> None:
    """Remember that ``request`` resolves to ``resolved`` (on ``dev``) in the store's resolution index."""
    w = resolved.weights
    ResolutionIndex(index_root).remember(request, Resolution(resolved.identity.key, str(dev), w.path, w.digest))


@dataclass
class _Job:
    """One extraction run: the store, the run options, the device and this process's rank."""

    store: FeatureStore
    run: RunSpec
    device: torch.device
    dist: distributed.Dist

    @property
    def workers(self) -> int:
        return default_workers() if self.run.workers is None else self.run.workers

    def extract_set(self, manifest: Manifest, resolved: ResolvedIdentity | RememberedIdentity, t_start: float,
                    digest_s: float = 0.0) -> ExtractResult:
        """Plan, compute the missing rows (this rank's share), publish the view, merge small shards."""
        timings = new_timings()
        timings["digest_s"] = digest_s
        fs = self.store.open(resolved.identity)
        view = fs.view_path(manifest.name, manifest.fingerprint())
        common = dict(feature_key=fs.key, data=manifest.name, identity=resolved.identity.to_dict(),
                      ignored=len(manifest.ignored), device=str(self.device))
        dist = self.dist
        # a shared lock for the whole run: `cache gc` (exclusive) leaves a set alone while rows are
        # being added to it, as they are in no view yet
        with fs.lock(shared=True):
            # rank 0 decides (a cache hit, or which rows are missing) so that every rank agrees
            plan = plan_rows(fs, manifest, view, self.run.on_error) if dist.is_main else None
            hit, todo, skipped = dist.broadcast(plan)
            if hit:
                return cache_hit_result(view, timings, t_start, common)
            chosen = dist.broadcast(self.settle_levers(fs, resolved.identity, len(todo)) if dist.is_main else None)
            mine = todo[dist.rank::dist.world]
            mine_done = self.compute_rows(fs, manifest, mine, resolved, timings, chosen) if mine else (0, False, [])
            ranks = dist.gather(mine_done)
            skipped = skipped + [b for r in ranks for b in r[2]]
            t0 = time.perf_counter()
            keep, skipped = rows_to_keep(manifest, skipped)
            if dist.is_main:
                write_dataset_view(fs, view, manifest, keep, skipped, weights_path=resolved.weights_path,
                                   world=dist.world)
        dist.barrier()  # every rank has let go of the set: rank 0 may merge its small shards
        if dist.is_main:
            fs.compact()
        timings["view_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        extracted = sum(r[0] for r in ranks)
        return ExtractResult(view=str(view), rows=len(keep), dim=fs.dim() or 0, extracted=extracted,
                             reused=len(keep) - extracted, cache_hit=False, model_built=any(r[1] for r in ranks),
                             skipped=skipped, timings=timings, workers=self.workers, levers=chosen.describe(),
                             heap_reuse=self.reuses_heap,
                             **common)

    def settle_levers(self, fs: FeatureSet, ident: FeatureIdentity, images: int) -> levers.Levers:
        """The inference levers of this set's rows: its record, or the rule's choice for a new set."""
        pixels = int(ident.preprocess["crop"]) ** 2
        levers.warn_if_emulated(self.device, ident.precision)
        wanted = levers.choose(ident.backbone, self.device, compute=self.run.compute, precision=ident.precision,
                               images=images, pixels=pixels)
        return levers.settle(fs, wanted, self.run.compute, self.device)

    def compute_rows(self, fs: FeatureSet, manifest: Manifest, mine: list[int],
                     resolved: ResolvedIdentity | RememberedIdentity,
                     timings: dict, chosen: levers.Levers = levers.PLAIN) -> tuple[int, bool, list[dict]]:
        """Build the model and run it over rows ``mine``: (rows written, model built, files skipped).

        The decoding workers start first, so their first batches are ready when the model is."""
        ident, run = resolved.identity, self.run
        transform = ident_transform(ident)
        batches = Decoding(manifest.reader, mine, transform, device=self.device, batch_size=run.batch_size,
                           workers=self.workers, decode=decode_mode(ident.decoder),
                           resize=int(ident.preprocess["resize"]))
        try:
            with allocator.keep_freed_memory(self.reuses_heap):
                return self._forward_rows(fs, manifest, mine, resolved, timings, chosen, batches, transform)
        finally:
            batches.close()

    @property
    def reuses_heap(self) -> bool:
        """Whether the forward keeps freed memory for the next batch (:func:`levers.keeps_freed_memory`)."""
        return levers.keeps_freed_memory(self.device, self.run.compute)

    def _forward_rows(self, fs: FeatureSet, manifest: Manifest, mine: list[int],
                      resolved: ResolvedIdentity | RememberedIdentity,
                      timings: dict, chosen: levers.Levers, batches: Decoding, transform):
        """Build the model, prepare its levers, forward ``batches`` into a writer (see compute_rows)."""
        ident, run = resolved.identity, self.run
        crop = int(ident.preprocess["crop"])

        def build() -> torch.nn.Module:
            extractor = FeatureExtractor(resolved.entry.build(resolved.weights), layer=ident.layer,
                                         pool=ident.pool).to(self.device)
            return extractor.to(memory_format=torch.channels_last) if self.device.type == "cuda" else extractor

        extractor, setup = levers.prepare_for_set(
            build, chosen, torch.zeros(min(run.batch_size, levers.TRACE_ROWS), 3, crop, crop), fs.dir)
        timings.update(setup)
        writer = _Writer(fs, run.flush_rows, run.flush_every)
        writer.start()
        t0 = time.perf_counter()
        try:
            bad = run_backbone(
                extractor, batches, mine, [manifest.digests[i] for i in mine], transform,
                writer, device=self.device, precision=ident.precision, batch_size=run.batch_size,
                on_error=run.on_error, ids=manifest.ids,
                progress=run.progress and self.dist.is_main, timings=timings, compute=chosen)
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
        return extracted, True, bad


def ident_transform(ident: FeatureIdentity):
    p = dict(ident.preprocess)
    p["mean"], p["std"] = tuple(p["mean"]), tuple(p["std"])
    return Preprocess(**p).build()
