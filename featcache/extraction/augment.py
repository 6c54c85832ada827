"""Cached augmented views: N randomly augmented copies of each training image.

Heads can then train on augmented features without running the backbone again.
Copy k of an image is seeded by (seed, content digest, k), so it is the same in
every run, worker and rank. The augmentation policy and the seed join the
feature identity (a feature set of its own, beside the plain one); the number of
copies does not: asking for 4 copies after 2 extracts only copies 2 and 3.
Evaluation always uses the plain view.

The policy works at the image's own resolution, before the backbone's usual
resize and centre-crop: a random crop (70-100 % of the area, aspect 3/4-4/3),
a horizontal flip with probability 1/2, and brightness/contrast/saturation
jitter of +-20 %.
"""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageEnhance

from featcache.extraction.manifest import Manifest
from featcache.errors import FeatcacheError
from featcache.store.keys import FeatureIdentity
from featcache.store.views import resolve_view

POLICY = {"name": "crop-flip-jitter-v1", "area": [0.7, 1.0], "ratio": [0.75, 1.3333], "flip": 0.5, "jitter": 0.2}
SEP = "#aug"


def _seed(seed: int, digest: str, k: int) -> int:
    h = hashlib.blake2b(f"{seed}:{digest}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def augment_image(img: Image.Image, seed: int) -> Image.Image:
    """One augmented copy of an RGB image, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = img.size
    area = w * h * rng.uniform(*POLICY["area"])
    ratio = np.exp(rng.uniform(np.log(POLICY["ratio"][0]), np.log(POLICY["ratio"][1])))
    cw = int(round(min(w, max(1, np.sqrt(area * ratio)))))
    ch = int(round(min(h, max(1, np.sqrt(area / ratio)))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < POLICY["flip"]:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    j = POLICY["jitter"]
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhancer(out).enhance(float(rng.uniform(1 - j, 1 + j)))
    return out


class AugmentedReader:
    """Row ``i * copies + k`` is copy k of the base manifest's row ``rows[i]``."""

    def __init__(self, base_reader, rows: list[int], digests: list[str], copies: int, seed: int):
        self.base, self.rows, self.digests, self.copies, self.seed = base_reader, rows, digests, copies, seed

    def load(self, p: int) -> Image.Image:
        i, k = divmod(p, self.copies)
        return augment_image(self.base.load(self.rows[i]), _seed(self.seed, self.digests[i], k))

    def digests_of(self) -> list[str]:
        return [hashlib.blake2b(f"{d}{SEP}{k}".encode(), digest_size=16).hexdigest()
                for d in self.digests for k in range(self.copies)]

    def digests(self, _digest_cache) -> list[str]:
        return self.digests_of()


def augmented_manifest(base: Manifest, copies: int, seed: int) -> Manifest:
    """The augmented rows of ``base``: its training rows (all labelled rows when it has no split)."""
    if copies < 1:
        raise FeatcacheError(f"--augment {copies}: expected a positive number of augmented copies per image")
    if base.digests is None:
        raise RuntimeError("digests of the base manifest are needed first")
    has_split = any(base.split)
    rows = [i for i, (s, y, d) in enumerate(zip(base.split, base.labels, base.digests))
            if d is not None and y >= 0 and (s == "train" if has_split else True)]
    reader = AugmentedReader(base.reader, rows, [base.digests[i] for i in rows], copies, seed)
    m = Manifest(
        name=f"{base.name}-aug{copies}",
        source=base.source,
        root=base.root,
        ids=[f"{base.ids[i]}{SEP}{k}" for i in rows for k in range(copies)],
        paths=[base.paths[i] for i in rows for k in range(copies)],
        labels=np.repeat(base.labels[rows], copies) if rows else np.zeros(0, np.int64),
        class_names=base.class_names,
        split=[base.split[i] for i in rows for k in range(copies)],
        reader=reader,
    )
    m.digests = reader.digests_of()
    return m


def identity_extra(seed: int) -> dict:
    return {"augment": dict(POLICY), "augment_seed": int(seed)}


def source_id(aug_id: str) -> str:
    return aug_id.rsplit(SEP, 1)[0]


def find_augmented_view(plain_identity: dict, data_name: str, copies: int, seed: int = 0, cache_dir=None) -> str:
    """The augmented view (N copies) that belongs to a plain view, or a clear error."""
    ident = FeatureIdentity.from_dict({**plain_identity, "extra": identity_extra(seed)})
    try:
        return str(resolve_view(f"{ident.key}:{data_name}-aug{copies}", cache_dir))
    except FeatcacheError:
        raise FeatcacheError(
            f"no augmented view with {copies} copies (seed {seed}) of {data_name!r} under {ident.key}; "
            f"extract it first: featcache extract --augment {copies} ... (or fit-head --data ... --augment {copies})"
        ) from None
