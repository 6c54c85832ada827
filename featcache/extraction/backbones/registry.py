"""Backbone registry: which networks can be extracted, their weights and preprocessing.

Every torchvision classification model is registered from torchvision's own
registry (``torchvision.models.list_models``); extra sources register themselves
with :func:`register_backbone`. Nothing here hand-writes mean/std/resize values
that the weights already carry: preprocessing comes from ``Weights.transforms``.

Resolving a backbone (name + weights + layer + preprocessing) never builds the
network, so the feature identity is known before any model exists.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import urllib.error
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from featcache.errors import UnknownNameError, WeightsError

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
    # (backbone, weights label, build kwargs) whose network must accept the input size; set by
    # BackboneEntry.resolve_weights. Not part of the identity (to_dict leaves it out).
    network: tuple | None = field(default=None, compare=False, repr=False)

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
        """Resize and crop to ``size`` px; refused when the network cannot take that input."""
        if size is None:
            return self
        if int(size) < 8:
            raise WeightsError(f"--image-size {size} is too small; expected an integer >= 8 (pixels)")
        if int(size) > MAX_IMAGE_SIZE:
            raise WeightsError(
                f"--image-size {size} is too large; expected at most {MAX_IMAGE_SIZE} (pixels). "
                f"Every image is resized to SIZE x SIZE, so memory grows with SIZE squared"
            )
        size = int(size)
        if self.network is not None and size != self.crop:
            check_input_size(*self.network, size=size, default=self.crop)
        return replace(self, resize=size, crop=size)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "network"}
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def build(self):
        """The torchvision transform (PIL image -> normalised float tensor)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms._presets import ImageClassification

        return ImageClassification(
            crop_size=self.crop,
            resize_size=self.resize,
            mean=self.mean,
            std=self.std,
            interpolation=InterpolationMode(self.interpolation),
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


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.endswith((".pth", ".pt", ".bin", ".ckpt")) or os.path.exists(spec)


def load_state_dict_file(path: str) -> dict:
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
    return {k.removeprefix("module."): v for k, v in obj.items()}


def apply_state_dict(module: nn.Module, state: dict, source: str) -> None:
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
    module.load_state_dict(state, strict=True)


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

    def resolve_weights(self, spec: str = "DEFAULT") -> WeightsChoice:
        choice = self._resolve_weights(str(spec))
        kwargs = self.build_kwargs(choice)
        network = (self.name, choice.label, tuple(sorted(kwargs.items())))
        return replace(
            choice,
            digest=choice.digest + build_note(kwargs),
            preprocess=replace(choice.preprocess, network=network),
        )

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
                    f"weights file {spec!r} does not exist; expected a state-dict file "
                    "(torch.save(model.state_dict(), PATH)), DEFAULT, a weights name, or none"
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
        """Build the module and load its weights (random init is seeded)."""
        kwargs = self.build_kwargs(weights)
        if weights.kind == "none":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                module = self.builder(**kwargs)
        else:
            module = self.builder(**kwargs)
            state = load_state_dict_file(weights.path) if weights.kind == "file" else self.load_named_weights(weights)
            opt = self.optional_state
            if opt and self.finish is not None and not all(any(k.startswith(p) for k in state) for p in opt):
                # saved from a finished model (e.g. torchvision's pretrained googlenet): no aux heads
                self.finish(module)
                state = {k: v for k, v in state.items() if not k.startswith(opt)}
            apply_state_dict(module, state, weights.label)
        if self.finish is not None:
            self.finish(module)
        return module.eval()


_REGISTRY: dict[str, BackboneEntry] = {}
_TORCHVISION_LOADED = False


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"backbone {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


# Constructor settings torchvision's builders apply when they are given weights (read from
# torchvision/models/{googlenet,inception,vision_transformer,maxvit}.py). featcache builds the same
# way for every weights choice; for ``none`` and a local file, with the DEFAULT weights' settings.
_INPUT_TRANSFORM_MODELS = ("googlenet", "inception_v3")  # transform_input=True, aux_logits=True, init_weights=False
_AUX_DROPPED_MODELS = {"googlenet": ("aux1", "aux2")}  # aux heads removed after loading (aux_logits not asked for)


def _torchvision_build_kwargs(name: str, w) -> dict:
    """The keyword arguments torchvision's builder for ``name`` passes to the model class for weights ``w``."""
    if w is None:
        return {}
    import torchvision.models as tvm

    kwargs = {"num_classes": len(w.meta["categories"])}
    if name in _INPUT_TRANSFORM_MODELS:
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    module = getattr(tvm.get_model_builder(name), "__module__", "")
    if module.endswith(".vision_transformer"):
        kwargs["image_size"] = int(w.meta["min_size"][0])
    elif module.endswith(".maxvit"):
        kwargs["input_size"] = tuple(int(x) for x in w.meta["min_size"])
    return kwargs


def _drop_aux_heads(heads: tuple[str, ...]) -> Callable[[nn.Module], None]:
    def finish(module: nn.Module) -> None:
        for head in heads:
            setattr(module, head, None)
        if hasattr(module, "aux_logits"):
            module.aux_logits = False

    return finish


def _torchvision_entry(name: str) -> BackboneEntry:
    import torchvision.models as tvm

    def enum():
        try:
            return tvm.get_model_weights(name)
        except (ValueError, KeyError):
            return None

    def weights_names():
        e = enum()
        return [w.name for w in e] if e is not None else []

    def default_weights():
        e = enum()
        return e.DEFAULT.name if e is not None else None

    def default_preprocess():
        e = enum()
        if e is None:
            return Preprocess(resize=256, crop=224, **IMAGENET)
        return Preprocess.from_transforms(e.DEFAULT.transforms())

    def resolve_named(spec: str) -> WeightsChoice:
        e = enum()
        names = weights_names()
        prefix, _, short = spec.rpartition(".")
        if e is None or (short.upper() != "DEFAULT" and short not in names):
            raise UnknownNameError(
                f"weights for {name}",
                spec,
                ["DEFAULT", "none", *names],
                hint="or pass a local state-dict file path",
            )
        owner = prefix.rsplit(".", 1)[-1]
        if prefix and owner not in (e.__name__, name):
            valid = ", ".join(["DEFAULT", *names, *(f"{e.__name__}.{n}" for n in names)])
            raise WeightsError(
                f"weights {spec!r} are {owner} weights, not weights of {name}; {name} takes "
                f"{e.__name__}: one of {valid}, none, or a local state-dict file path"
            )
        w = e.DEFAULT if short.upper() == "DEFAULT" else e[short]
        url_hash = Path(w.url).stem.rsplit("-", 1)[-1]
        return WeightsChoice(
            label=f"{type(w).__name__}.{w.name}",
            digest=f"sha256-prefix:{url_hash}",
            preprocess=Preprocess.from_transforms(w.transforms()),
            kind="torchvision",
            enum=w,
        )

    def load_named(choice: WeightsChoice) -> dict:
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

    def build_kwargs(choice: WeightsChoice | None) -> dict:
        w = choice.enum if choice is not None and choice.kind == "torchvision" else None
        if w is None:
            e = enum()
            w = e.DEFAULT if e is not None else None
        return _torchvision_build_kwargs(name, w)

    aux = _AUX_DROPPED_MODELS.get(name, ())
    return BackboneEntry(
        name=name,
        source="torchvision",
        builder=lambda **kwargs: tvm.get_model(name, weights=None, **kwargs),
        weights_names=weights_names,
        default_weights=default_weights,
        resolve_named_weights=resolve_named,
        default_preprocess=default_preprocess,
        load_named_weights=load_named,
        build_kwargs=build_kwargs,
        finish=_drop_aux_heads(aux) if aux else None,
        optional_state=tuple(f"{h}." for h in aux),
    )


def _ensure_loaded() -> None:
    global _TORCHVISION_LOADED
    if _TORCHVISION_LOADED:
        return
    import torchvision.models as tvm

    for name in tvm.list_models(module=tvm):
        if name not in _REGISTRY:
            register_backbone(_torchvision_entry(name))
    _TORCHVISION_LOADED = True
    from featcache.extraction.backbones import lite0 as extra_backbones  # noqa: F401  (registers on import)


def list_backbones() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("backbone", name, _REGISTRY, hint="`featcache backbones` lists them") from None


# --------------------------------------------------------------------------- layers


def final_layer_name(module: nn.Module) -> str:
    """The final classification layer: the last Linear (or, for all-conv nets, the last Conv2d)."""
    last_linear = last_conv = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            last_linear = name
        elif isinstance(m, nn.Conv2d):
            last_conv = name
    found = last_linear or last_conv
    if found is None:
        raise WeightsError(f"{type(module).__name__} has no Linear or Conv2d layer to read features before")
    return found


def penultimate_dim(module: nn.Module) -> int:
    m = module.get_submodule(final_layer_name(module))
    return int(m.in_features if isinstance(m, nn.Linear) else m.in_channels)


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
    import warnings

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
def _input_size_problem(backbone: str, build: tuple, size: int, default: int) -> tuple[int | None, str] | None:
    """None if the network takes ``size`` px input, else (the one size it takes or None, what failed)."""
    import warnings

    from featcache.extraction.layers import FeatureExtractor

    entry = get_backbone(backbone)
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


def check_input_size(backbone: str, weights_label: str, build: tuple, *, size: int, default: int) -> None:
    """Raise WeightsError when ``backbone`` built with ``build`` cannot take ``size`` px images."""
    problem = _input_size_problem(backbone, tuple(build), int(size), int(default))
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


def describe_all(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """name, source, penultimate dim, default weights and weights names of every backbone.

    Dims need each architecture built (on the meta device, no weights); the table is
    cached per torchvision version under ``cache_dir`` when one is given.
    """
    import torchvision

    from featcache._version import __version__

    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f".backbones-{__version__}-tv{torchvision.__version__}.json"
        if cache_file.is_file():
            try:
                rows = json.loads(cache_file.read_text())
                if [r["name"] for r in rows] == list_backbones():
                    return rows
            except (ValueError, KeyError, TypeError):
                pass
    rows = []
    for name in list_backbones():
        entry = get_backbone(name)
        rows.append(
            {
                "name": name,
                "source": entry.source,
                "dim": penultimate_dim(skeleton(entry)),
                "default_weights": entry.default_weights(),
                "weights": entry.weights_names(),
            }
        )
    if cache_file is not None:
        from featcache.atomic import atomic_path

        with contextlib.suppress(OSError), atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps(rows))
    return rows
