"""The backbone registry: entries, weights choices and the preprocessing that belongs to them.

A :class:`BackboneEntry` says how to build a network, which weights it takes and how to
resolve them (``DEFAULT``, a weights name, ``none`` for a seeded random init, or a local
state-dict file) without building it, so the feature identity is known before any model
exists. Nothing here hand-writes mean/std/resize values that the weights already carry:
preprocessing comes from the weights (``Weights.transforms`` for torchvision).

The sources register their entries with :func:`register_backbone`: one module per source
(``torchvision.py``, ``lite0.py``), listed in ``featcache/extraction/backbones/__init__.py``,
which also holds the lookups (:func:`~featcache.extraction.backbones.get_backbone`).
"""
from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from featcache.errors import UnknownNameError, WeightsError
from featcache.extraction.preprocess import ClassificationPreset
from featcache.extraction.weights_names import looks_like_path
from featcache.store.digests import hash_file

# --------------------------------------------------------------------------- preprocessing

MAX_IMAGE_SIZE = 4096  # --image-size above this would need tens of GB per batch


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop, scale to [0, 1], normalise.

    The values come from the weights' own ``transforms()``; ``--image-size S``
    replaces resize and crop by S (the whole, square-cropped image at S px).
    """

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    antialias: bool = True
    # "center": resize the shorter side, keep the aspect ratio; "squash": resize both sides to
    # ``resize`` (timm's crop_mode='squash'). Left out of to_dict when "center" (keys stay as they were).
    crop_mode: str = "center"

    @classmethod
    def from_transforms(cls, t) -> "Preprocess":
        def one(v):
            return int(v[0] if isinstance(v, (list, tuple)) else v)

        return cls(
            resize=one(t.resize_size),
            crop=one(t.crop_size),
            mean=tuple(float(x) for x in t.mean),
            std=tuple(float(x) for x in t.std),
            interpolation=str(t.interpolation.value),
            antialias=bool(t.antialias) if t.antialias is not None else True,
        )

    def with_image_size(self, size: int | None) -> "Preprocess":
        """Resize and crop to ``size`` px (whether the network takes that input is
        :func:`featcache.extraction.backbones.shapes.check_input_size`)."""
        if size is None:
            return self
        if int(size) < 8:
            raise WeightsError(f"--image-size {size} is too small; expected an integer >= 8 (pixels)")
        if int(size) > MAX_IMAGE_SIZE:
            raise WeightsError(
                f"--image-size {size} is too large; expected at most {MAX_IMAGE_SIZE} (pixels). "
                f"Every image is resized to SIZE x SIZE, so memory grows with SIZE squared"
            )
        return replace(self, resize=int(size), crop=int(size))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.crop_mode == "center":
            del d["crop_mode"]
        return d

    def build(self):
        """The transform (PIL image -> normalised float tensor): torchvision's ``ImageClassification``,
        computed without importing torchvision (:mod:`featcache.extraction.preprocess`)."""
        return ClassificationPreset(
            crop_size=self.crop,
            # "squash": both sides, the aspect ratio is not kept
            resize_size=[self.resize, self.resize] if self.crop_mode == "squash" else self.resize,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            antialias=self.antialias,
        )


IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightsChoice:
    """Resolved weights: what enters the identity, and how to get the tensors."""

    label: str  # e.g. "ResNet18_Weights.IMAGENET1K_V1", "file:/x.pth", "none"
    digest: str  # digest of the weights file (or of the random-init recipe)
    preprocess: Preprocess
    kind: str  # "torchvision" | "file" | "none" | "packaged"
    enum: object | None = None
    path: str | None = None


RANDOM_INIT_SEED = 0


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a weights file (hex)."""
    return hash_file(path, "sha256")


def read_safetensors(path: str) -> dict:
    try:
        from safetensors.torch import load_file  # optional: installed with the timm extra
    except ImportError:
        raise WeightsError(f"weights file {path!r} is a .safetensors file, which needs the package safetensors; "
                           "install it with: pip install safetensors, or save the state dict with torch.save") from None
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise WeightsError(f"cannot read weights file {path!r} ({type(e).__name__}: {str(e)[:160]}); expected a "
                           "safetensors state dict (safetensors.torch.save_file(model.state_dict(), PATH))") from None


def load_state_dict_file(path: str) -> dict:
    """A state dict from ``path``, read without running code: safetensors, or torch.load(weights_only=True)."""
    if str(path).endswith(".safetensors"):
        return read_safetensors(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        detail = (str(e).strip().splitlines() or [""])[0]
        if len(detail) > 160:
            detail = detail[:157] + "..."
        why = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
        hint = ""
        if "Weights only load failed" in str(e):
            hint = (" (it holds Python objects other than tensors, e.g. a whole pickled model or training "
                    "state: load it where it was made and save only model.state_dict())")
        raise WeightsError(
            f"cannot read weights file {path!r} ({why}){hint}; expected a PyTorch state dict "
            "(parameter name -> tensor) saved with torch.save(model.state_dict(), PATH)"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path!r} does not hold a state dict (name -> tensor)")
    if not any(k.startswith("module.") for k in obj):
        return obj
    meta = getattr(obj, "_metadata", None)  # per-module versions, read by some modules' loaders
    return with_metadata({k.removeprefix("module."): v for k, v in obj.items()},
                         None if meta is None else {("" if k == "module" else k.removeprefix("module.")): v
                                                    for k, v in meta.items() if k == "module" or k.startswith("module.")})


def with_metadata(state: dict, metadata) -> dict:
    """``state`` carrying the ``_metadata`` of a ``state_dict()`` (module versions): rebuilt dicts
    lose it, and modules such as MNASNet refuse to load without it."""
    if metadata is None:
        return state
    state = OrderedDict(state)
    state._metadata = metadata  # type: ignore[attr-defined]
    return state


def apply_state_dict(module: nn.Module, state: dict, source: str, *, assign: bool = False) -> None:
    """Load ``state`` into ``module`` (strict), naming what does not fit. ``assign``: the state's
    tensors become the module's (for a module built on the meta device), in the module's dtypes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {'; '.join(wrong[:3])})")
        raise WeightsError(
            f"weights {source} do not fit the architecture {type(module).__name__}: "
            + ", ".join(parts)
            + "; pass weights saved from the same architecture"
        )
    if assign:  # a copy into the module's tensors would cast; the assigned tensors must match too
        state = with_metadata({k: v.to(own[k].dtype) for k, v in state.items()}, getattr(state, "_metadata", None))
    module.load_state_dict(state, strict=True, assign=assign)


# --------------------------------------------------------------------------- registry


def _no_build_kwargs(_choice: WeightsChoice | None) -> dict:
    return {}


# Constructor values of a plain ``get_model(name)``; build kwargs equal to these change no number,
# so they stay out of the weights digest (and existing feature keys stay valid).
_PLAIN_BUILD = {"num_classes": 1000, "image_size": 224, "input_size": (224, 224)}


def build_note(kwargs: dict) -> str:
    """``;build:k=v,...`` for constructor settings that differ from a plain build ('' when none)."""
    changed = {k: v for k, v in sorted(kwargs.items()) if _PLAIN_BUILD.get(k, object()) != v}
    return ";build:" + ",".join(f"{k}={v}" for k, v in changed.items()) if changed else ""


@dataclass
class BackboneEntry:
    """One registered backbone.

    ``builder(**build_kwargs(choice))`` returns an untrained module built the way its source builds
    it for those weights (``build_kwargs(None)``: for the default weights). ``finish(module)`` applies
    what the source does after loading weights (e.g. removing googlenet's auxiliary heads);
    ``optional_state`` are state-dict prefixes a weights file may lack because ``finish`` removes them.
    """

    name: str
    source: str
    builder: Callable[..., nn.Module]
    weights_names: Callable[[], list[str]]
    default_weights: Callable[[], str | None]
    resolve_named_weights: Callable[[str], WeightsChoice]
    default_preprocess: Callable[[], Preprocess]
    load_named_weights: Callable[[WeightsChoice], dict]
    build_kwargs: Callable[[WeightsChoice | None], dict] = _no_build_kwargs
    finish: Callable[[nn.Module], None] | None = None
    optional_state: tuple[str, ...] = ()
    version: str = ""  # version of the source library, where it changes the numbers (in the key: source==version)

    def resolve_weights(self, spec: str = "DEFAULT") -> WeightsChoice:
        choice = self._resolve_weights(str(spec))
        return replace(choice, digest=choice.digest + build_note(self.build_kwargs(choice)))

    def _resolve_weights(self, spec: str) -> WeightsChoice:
        if spec.lower() == "none":
            return WeightsChoice(
                label="none",
                digest=f"random-init:seed={RANDOM_INIT_SEED}:torch={torch.__version__}",
                preprocess=self.default_preprocess(),
                kind="none",
            )
        if spec.upper() != "DEFAULT" and looks_like_path(spec):
            p = Path(spec).expanduser()
            if not p.is_file():
                raise WeightsError(
                    f"weights file {spec!r} for backbone {self.name} does not exist; expected a state-dict file "
                    "(torch.save(model.state_dict(), PATH), or a .safetensors file), DEFAULT, a weights name, or none"
                )
            return WeightsChoice(
                label=f"file:{p.name}",
                digest=file_digest(p),
                preprocess=self.default_preprocess(),
                kind="file",
                path=str(p.resolve()),
            )
        return self.resolve_named_weights(spec)

    def build(self, weights: WeightsChoice) -> nn.Module:
        """Build the module and load its weights (random init is seeded).

        With weights to load, the module is built on the meta device and given the weights'
        tensors: the random initialisation they would overwrite is skipped (vgg16 1.57 -> 0.04 s,
        vit_b_16 0.87 -> 0.06 s, resnet50 0.30 -> 0.09 s on 2 cores; the same module, bit for
        bit). A constructor that fails on the meta device, or makes tensors the weights do not
        hold (non-persistent buffers), is built and initialised as before.
        """
        kwargs = self.build_kwargs(weights)
        if weights.kind == "none":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                module = self.builder(**kwargs)
        else:
            state = load_state_dict_file(weights.path) if weights.kind == "file" else self.load_named_weights(weights)
            module = self._skeleton(kwargs)
            if module is not None:
                self._load(module, state, weights.label, assign=True)
            if module is None or any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers())):
                module = self.builder(**kwargs)
                self._load(module, state, weights.label, assign=False)
        if self.finish is not None:
            self.finish(module)
        return module.eval()

    def _skeleton(self, kwargs: dict) -> nn.Module | None:
        """The module built on the meta device (no memory, no initialisation), or None when its
        constructor cannot run there."""
        try:
            with torch.device("meta"):
                return self.builder(**kwargs)
        except Exception:  # noqa: BLE001 - any failure: build it the usual way, which reports its own errors
            return None

    def _load(self, module: nn.Module, state: dict, label: str, *, assign: bool) -> None:
        opt = self.optional_state
        if opt and self.finish is not None and not all(any(k.startswith(p) for k in state) for p in opt):
            # saved from a finished model (e.g. torchvision's pretrained googlenet): no aux heads
            self.finish(module)
            state = with_metadata({k: v for k, v in state.items() if not k.startswith(opt)},
                                  getattr(state, "_metadata", None))
        apply_state_dict(module, state, label, assign=assign)


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"backbone {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


@dataclass(frozen=True)
class BackboneSource:
    """A source of many backbones named ``<prefix>NAME``, made into entries only when asked for.

    ``names()`` lists them (it may import the source's library); ``entry(name)`` returns the entry
    for a name (or raises a FeatcacheError naming the fix); ``describe(cache_dir, names, dims)``
    returns the rows of ``featcache backbones`` for some of its names (``dims``: compute every dim);
    ``missing()`` says how to install the source's library when it is not installed (else None).
    """

    name: str
    prefix: str
    names: Callable[[], list[str]]
    entry: Callable[[str], BackboneEntry]
    describe: Callable[..., list[dict]]
    missing: Callable[[], str | None] = lambda: None


_SOURCES: dict[str, BackboneSource] = {}
_LOOKED_UP: dict[str, BackboneEntry] = {}  # entries of sources, by the names they were asked for


def register_source(source: BackboneSource) -> BackboneSource:
    if source.prefix in _SOURCES:
        raise ValueError(f"backbone source {source.prefix!r} is already registered")
    _SOURCES[source.prefix] = source
    return source


def registered_sources() -> list[BackboneSource]:
    return list(_SOURCES.values())


def registered(name: str) -> BackboneEntry:
    """The entry registered as ``name``, or made by the source whose prefix it has
    (:func:`featcache.extraction.backbones.get_backbone` loads every source first)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    source = next((s for p, s in _SOURCES.items() if name.startswith(p)), None)
    if source is None:  # close matches among every name (timm's too: `vit_small` -> `timm:vit_small...`)
        valid = [*_REGISTRY, *(n for s in _SOURCES.values() for n in s.names())]
        raise UnknownNameError("backbone", name, valid, hint="`featcache backbones` lists them")
    if name not in _LOOKED_UP:
        entry = source.entry(name)
        _LOOKED_UP[name] = _LOOKED_UP.setdefault(entry.name, entry)  # an alias shares its canonical entry
    return _LOOKED_UP[name]


def registered_names() -> list[str]:
    return sorted(_REGISTRY)
