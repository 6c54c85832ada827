"""The torchvision source: every classification model of ``torchvision.models``, with its weights enum.

Preprocessing comes from each weights' own ``transforms()``; the network is built the way
torchvision's builder builds it for those weights, so a local weights file saved from a
torchvision model loads as it would there.
"""
from __future__ import annotations

import functools
import os
import urllib.error
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from featcache.errors import UnknownNameError, WeightsError
from featcache.extraction.backbones.registry import (
    IMAGENET,
    BackboneEntry,
    Preprocess,
    WeightsChoice,
    register_backbone,
    registered_names,
)

# Constructor settings torchvision's builders apply when they are given weights (read from
# torchvision/models/{googlenet,inception,vision_transformer,maxvit}.py). featcache builds the same
# way for every weights choice; for ``none`` and a local file, with the DEFAULT weights' settings.
INPUT_TRANSFORM_MODELS = ("googlenet", "inception_v3")  # transform_input=True, aux_logits=True, init_weights=False
AUX_DROPPED_MODELS = {"googlenet": ("aux1", "aux2")}  # aux heads removed after loading (aux_logits not asked for)


@functools.cache
def models():
    """``torchvision.models``, imported on first use: importing torchvision loads all of it (models, ops,
    torch._dynamo), seconds that a run computing rows with a kept graph does not need."""
    import torchvision.models  # torchvision: only where a model or its weights enum is needed

    return torchvision.models


def register() -> None:
    """Register every torchvision classification model not registered yet."""
    taken = set(registered_names())
    tvm = models()
    for name in tvm.list_models(module=tvm):
        if name not in taken:
            register_backbone(TorchvisionModel(name).entry())


def build_kwargs_for(name: str, w) -> dict:
    """The keyword arguments torchvision's builder for ``name`` passes to the model class for weights ``w``."""
    if w is None:
        return {}
    kwargs = {"num_classes": len(w.meta["categories"])}
    if name in INPUT_TRANSFORM_MODELS:
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    module = getattr(models().get_model_builder(name), "__module__", "")
    if module.endswith(".vision_transformer"):
        kwargs["image_size"] = int(w.meta["min_size"][0])
    elif module.endswith(".maxvit"):
        kwargs["input_size"] = tuple(int(x) for x in w.meta["min_size"])
    return kwargs


def drop_aux_heads(heads: tuple[str, ...]) -> Callable[[nn.Module], None]:
    def finish(module: nn.Module) -> None:
        for head in heads:
            setattr(module, head, None)
        if hasattr(module, "aux_logits"):
            module.aux_logits = False

    return finish


class TorchvisionModel:
    """One torchvision model: its weights enum, their names and preprocessing, how to build it."""

    def __init__(self, name: str):
        self.name = name

    def entry(self) -> BackboneEntry:
        aux = AUX_DROPPED_MODELS.get(self.name, ())
        return BackboneEntry(
            name=self.name,
            source="torchvision",
            builder=self.build,
            weights_names=self.weights_names,
            default_weights=self.default_weights,
            resolve_named_weights=self.resolve_named,
            default_preprocess=self.default_preprocess,
            load_named_weights=self.load_named,
            build_kwargs=self.build_kwargs,
            finish=drop_aux_heads(aux) if aux else None,
            optional_state=tuple(f"{h}." for h in aux),
        )

    def build(self, **kwargs) -> nn.Module:
        return models().get_model(self.name, weights=None, **kwargs)

    def enum(self):
        try:
            return models().get_model_weights(self.name)
        except (ValueError, KeyError):
            return None

    def weights_names(self) -> list[str]:
        e = self.enum()
        return [w.name for w in e] if e is not None else []

    def default_weights(self) -> str | None:
        e = self.enum()
        return e.DEFAULT.name if e is not None else None

    def default_preprocess(self) -> Preprocess:
        e = self.enum()
        if e is None:
            return Preprocess(resize=256, crop=224, **IMAGENET)
        return Preprocess.from_transforms(e.DEFAULT.transforms())

    def resolve_named(self, spec: str) -> WeightsChoice:
        """``DEFAULT``, ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1`` -> the weights, checked."""
        e, names, name = self.enum(), self.weights_names(), self.name
        prefix, _, short = spec.rpartition(".")
        if e is None or (short.upper() != "DEFAULT" and short not in names):
            raise UnknownNameError(f"weights for {name}", spec, ["DEFAULT", "none", *names],
                                   hint="or pass a local state-dict file path")
        owner = prefix.rsplit(".", 1)[-1]
        if prefix and owner not in (e.__name__, name):
            valid = ", ".join(["DEFAULT", *names, *(f"{e.__name__}.{n}" for n in names)])
            raise WeightsError(
                f"weights {spec!r} are {owner} weights, not weights of {name}; {name} takes "
                f"{e.__name__}: one of {valid}, none, or a local state-dict file path"
            )
        w = e.DEFAULT if short.upper() == "DEFAULT" else e[short]
        url_hash = Path(w.url).stem.rsplit("-", 1)[-1]
        return WeightsChoice(label=f"{type(w).__name__}.{w.name}", digest=f"sha256-prefix:{url_hash}",
                             preprocess=Preprocess.from_transforms(w.transforms()), kind="torchvision", enum=w)

    def load_named(self, choice: WeightsChoice) -> dict:
        w = choice.enum
        filename = os.path.basename(w.url)
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
        try:
            return w.get_state_dict(progress=False, check_hash=True)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            raise WeightsError(
                f"cannot obtain {choice.label} weights ({e.__class__.__name__}: {e}). They are not in "
                f"{cached} and could not be downloaded from {w.url}. Fix: copy the file to {cached} "
                f"(set TORCH_HOME to choose the cache folder), or pass --weights /path/to/{filename}"
            ) from None

    def build_kwargs(self, choice: WeightsChoice | None) -> dict:
        w = choice.enum if choice is not None and choice.kind == "torchvision" else None
        if w is None:
            e = self.enum()
            w = e.DEFAULT if e is not None else None
        return build_kwargs_for(self.name, w)
