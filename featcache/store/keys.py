"""The identity of a set of features, and the key derived from it.

The identity holds everything that changes the numbers (backbone, weights and
their digest, layer, pooling, the full preprocessing including the decoder,
compute precision, storage dtype, format version) and nothing that does not
(batch size, workers, device). It is computed without building the model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from featcache.extraction.decoders import DECODE_MODES, DECODER_VERSION, DECODERS
from featcache.errors import FeatcacheError, UnknownNameError

FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
PRECISIONS = ("float32", "bfloat16", "float16")


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class FeatureIdentity:
    backbone: str
    source: str
    weights: str
    weights_digest: str
    layer: str
    pool: str
    preprocess: dict
    precision: str = "float32"
    dtype: str = "float32"
    decoder: str = DECODER_VERSION
    format: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "backbone": self.backbone,
            "source": self.source,
            "weights": self.weights,
            "weights_digest": self.weights_digest,
            "layer": self.layer,
            "pool": self.pool,
            "preprocess": dict(self.preprocess),
            "decoder": self.decoder,
            "precision": self.precision,
            "dtype": self.dtype,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureIdentity":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def key(self) -> str:
        """``<backbone>-<12 hex>``: readable, and unique to the identity."""
        digest = hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:12]
        return f"{self.backbone}-{digest}"


def resolve_identity(
    backbone: str,
    *,
    weights: str = "DEFAULT",
    layer: str = "penultimate",
    pool: str = "avg",
    image_size: int | None = None,
    precision: str = "float32",
    dtype: str = "float32",
    extra: dict | None = None,
    decode: str = "workers",
):
    """-> (FeatureIdentity, BackboneEntry, WeightsChoice), without building the model.

    ``extra`` holds further settings that change the numbers (e.g. the augmentation policy).
    """
    # torch: only a full resolution needs the backbone registry (FeatureIdentity alone stays light)
    from featcache.extraction.backbones.registry import get_backbone
    from featcache.extraction.layers import POOLS

    entry = get_backbone(backbone)
    if pool not in POOLS:
        raise UnknownNameError("pooling", pool, POOLS)
    if dtype not in DTYPES:
        raise UnknownNameError("storage dtype", dtype, DTYPES)
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    if decode not in DECODE_MODES:
        raise UnknownNameError("--decode mode", decode, DECODE_MODES)
    if not layer:
        raise FeatcacheError("--layer is empty; expected 'penultimate' or a module name")
    choice = entry.resolve_weights(weights)
    pre = choice.preprocess.with_image_size(image_size)
    ident = FeatureIdentity(
        backbone=entry.name,
        source=entry.source,
        weights=choice.label,
        weights_digest=choice.digest,
        layer=layer,
        pool=pool,
        preprocess=pre.to_dict(),
        precision=precision,
        dtype=dtype,
        decoder=DECODERS[decode],
        extra=dict(extra or {}),
    )
    return ident, entry, choice
