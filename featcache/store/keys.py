"""The identity of a set of features, and the key derived from it.

The identity holds everything that changes the numbers (backbone, weights and
their digest, layer, pooling, the full preprocessing including the decoder,
compute precision, storage dtype, format version) and nothing that does not
(batch size, workers, device). It is resolved from a BackboneSpec, without building
the model, by :func:`featcache.extraction.identity.resolve_identity`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from featcache import specs

FORMAT_VERSION = 1
# Bumped whenever image decoding (mode conversion, alpha compositing) changes; the decode
# modes add their own suffix (featcache.extraction.decoders).
DECODER_VERSION = "rgb-on-white-v1"
#: compute precisions an identity records ("auto" is resolved on the device first)
PRECISIONS = tuple(p for p in specs.PRECISIONS if p != "auto")


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
        """``<backbone>-<12 hex>``: readable, and unique to the identity. A ``:`` in the backbone
        name becomes ``-`` (``timm-convnext_tiny.fb_in1k-...``): keys name folders, and ``KEY:DATA``
        names a view."""
        digest = hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:12]
        return f"{self.backbone.replace(':', '-')}-{digest}"
