"""The shape of a network without its weights: skeletons on the meta device, and the input sizes it takes."""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import nn

from featcache.errors import WeightsError
from featcache.extraction.backbones.registry import BackboneEntry, WeightsChoice, registered
from featcache.extraction.layers import FeatureExtractor


@contextlib.contextmanager
def _empty_parameters():
    """Create parameters on the meta device (for architectures whose builders reject a meta default)."""
    old = nn.Module.register_parameter

    def register(self, name, param):
        old(self, name, param)
        if param is not None:
            p = self._parameters[name]
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = old


def skeleton(entry: BackboneEntry, weights: WeightsChoice | None = None, kwargs: dict | None = None) -> nn.Module:
    """The architecture without memory for its weights (for dims, layer names and input sizes).

    Built as ``entry.build(weights)`` would build it (``weights`` None: the default weights'
    settings); ``kwargs`` overrides the build settings.
    """
    if kwargs is None:
        kwargs = entry.build_kwargs(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                module = entry.builder(**kwargs)
        except Exception:  # noqa: BLE001 - some builders compute on tensors at init
            with _empty_parameters():
                module = entry.builder(**kwargs).to("meta")
    if entry.finish is not None:
        entry.finish(module)
    return module.eval()


@functools.lru_cache(maxsize=256)
def input_size_problem(backbone: str, build: tuple, size: int, default: int) -> tuple[int | None, str] | None:
    """None if the network takes ``size`` px input, else (the one size it takes or None, what failed)."""
    entry = registered(backbone)
    model = skeleton(entry, kwargs=dict(build))
    fixed = getattr(model, "image_size", None)  # ViT-style: position embeddings made for one size
    if isinstance(fixed, int) and not isinstance(fixed, bool):
        return None if fixed == size else (fixed, f"it is built for {fixed}x{fixed} px input only")

    # Anything else: a forward pass on the meta device (shapes only, no memory, no compute) to the
    # penultimate layer, at the requested size; trusted only where the default size passes.
    extractor = FeatureExtractor(model)

    def fails(s: int) -> str | None:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                extractor(torch.empty(1, 3, s, s, device="meta"))
        except Exception as e:  # noqa: BLE001 - any failure means: this size does not go through
            detail = (str(e).strip().splitlines() or [""])[0][:160]
            return f"{type(e).__name__}: {detail}" if detail else type(e).__name__
        return None

    why = fails(size)
    if why is None or fails(default) is not None:
        return None
    return None, f"a forward pass at {size}x{size} px fails ({why})"


def check_input_size(entry: BackboneEntry, weights: WeightsChoice, size: int | None) -> None:
    """Raise WeightsError when ``entry`` built for ``weights`` cannot take ``size`` px images."""
    default = weights.preprocess.crop
    if size is None or int(size) == default:
        return
    size, backbone, weights_label = int(size), entry.name, weights.label
    build = tuple(sorted(entry.build_kwargs(weights).items()))
    problem = input_size_problem(backbone, build, size, default)
    if problem is None:
        return
    fixed, why = problem
    if fixed is not None:
        fix = (f"drop --image-size (these weights use {default} px)" if fixed == default
               else f"drop --image-size (these weights use {default} px) or pass --image-size {fixed}")
        raise WeightsError(f"backbone {backbone} ({weights_label}) cannot take --image-size {size}: {why}. "
                           f"Fix: {fix}")
    larger = " or pass a larger size" if size < default else ""
    raise WeightsError(f"backbone {backbone} ({weights_label}) cannot take --image-size {size}: {why}. "
                       f"Fix: drop --image-size (these weights use {default} px){larger}")
