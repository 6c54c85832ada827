"""From a :class:`~featcache.specs.BackboneSpec` to a feature identity, and back.

:func:`resolve_identity` checks a spec and computes its :class:`FeatureIdentity` (and so
its feature key) without building the model; :func:`spec_from_identity` rebuilds the spec
that reproduces a stored identity (a saved head's features, for ``predict``).
:class:`RememberedIdentity` is an identity the resolution index answered, whose registry
entry and weights are resolved only if the model has to be built.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from typing import NamedTuple

from featcache.devices import resolve_device, resolve_precision
from featcache.errors import FeatcacheError, UnknownNameError
from featcache.extraction.backbones import get_backbone
from featcache.extraction.backbones.registry import BackboneEntry, WeightsChoice
from featcache.extraction.backbones.shapes import check_input_size
from featcache.extraction.decoders import DECODE_MODES, DECODERS, decode_mode
from featcache.specs import DTYPES, POOLS, BackboneSpec
from featcache.store.keys import PRECISIONS, FeatureIdentity


class ResolvedIdentity(NamedTuple):
    """A feature identity with the registry entry and the weights it was resolved from."""

    identity: FeatureIdentity
    entry: BackboneEntry
    weights: WeightsChoice

    @property
    def weights_path(self) -> str | None:
        """The local weights file behind the identity (a file given, or one a package ships), else None."""
        return self.weights.path


@dataclass(frozen=True)
class RememberedIdentity:
    """The identity of ``spec`` as the resolution index remembered it: a stored set's identity.

    It needs neither the backbone registry nor torchvision. :attr:`entry` and :attr:`weights`
    resolve ``spec`` in full when first asked for, which only building the model does (a run
    whose set keeps an ONNX Runtime graph never asks), and refuse a resolution that gives
    another key than the index said.
    """

    identity: FeatureIdentity
    weights_path: str | None
    spec: BackboneSpec
    device: object  # what resolve_identity's ``device`` takes
    index_file: str  # named in the error, for the advice to delete it

    @functools.cached_property
    def full(self) -> ResolvedIdentity:
        full = resolve_identity(self.spec, device=self.device)
        if full.identity.key != self.identity.key:
            raise FeatcacheError(
                f"the resolution index {self.index_file} said backbone "
                f"{self.spec.backbone!r} gives feature set {self.identity.key}, but it resolves to "
                f"{full.identity.key} now; nothing was written. The index is a cache: delete that file and run "
                "the same command again")
        return full

    @property
    def entry(self) -> BackboneEntry:
        return self.full.entry

    @property
    def weights(self) -> WeightsChoice:
        return self.full.weights


def resolve_identity(backbone: BackboneSpec | str, *, device: str = "auto", **options) -> ResolvedIdentity:
    """The identity of ``backbone`` (a spec, or a name plus BackboneSpec fields), without building the model.

    ``precision="auto"`` resolves on ``device`` (a device string or a torch.device).
    """
    spec = backbone if isinstance(backbone, BackboneSpec) else BackboneSpec(backbone=backbone, **options)
    entry = get_backbone(spec.backbone)
    _check_choices(spec)
    precision = spec.precision if spec.precision != "auto" else resolve_precision("auto", resolve_device(device))
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    choice = entry.resolve_weights(spec.weights)
    preprocess = choice.preprocess.with_image_size(spec.image_size)
    check_input_size(entry, choice, spec.image_size)
    ident = FeatureIdentity(
        backbone=entry.name,
        source=f"{entry.source}=={entry.version}" if entry.version else entry.source,  # e.g. timm==1.0.31
        weights=choice.label,
        weights_digest=choice.digest,
        layer=spec.layer,
        pool=spec.pool,
        preprocess=preprocess.to_dict(),
        precision=precision,
        dtype=spec.dtype,
        decoder=DECODERS[spec.decode],
    )
    return ResolvedIdentity(ident, entry, choice)


def _check_choices(spec: BackboneSpec) -> None:
    if spec.pool not in POOLS:
        raise UnknownNameError("pooling", spec.pool, POOLS)
    if spec.dtype not in DTYPES:
        raise UnknownNameError("storage dtype", spec.dtype, DTYPES)
    if spec.decode not in DECODE_MODES:
        raise UnknownNameError("--decode mode", spec.decode, DECODE_MODES)
    if not spec.layer:
        raise FeatcacheError("--layer is empty; expected 'penultimate' or a module name")
    if spec.augment < 0:
        raise FeatcacheError(f"--augment {spec.augment}: expected 0 or a positive number of copies per image")


def spec_from_identity(identity: dict, weights_path: str | None = None) -> BackboneSpec:
    """The BackboneSpec that reproduces a stored identity (callers compare the keys)."""
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
    return BackboneSpec(
        backbone=identity["backbone"], weights=weights, layer=identity["layer"], pool=identity["pool"],
        image_size=None if pre == default else int(pre["crop"]), precision=identity["precision"],
        dtype=identity["dtype"], decode=decode_mode(identity.get("decoder")))


def with_extra(resolved: ResolvedIdentity, extra: dict) -> ResolvedIdentity:
    """The same identity with further settings that change the numbers (e.g. an augmentation policy)."""
    return resolved._replace(identity=replace(resolved.identity, extra=dict(extra)))
