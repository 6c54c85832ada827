"""timm backbones: every timm model as ``timm:NAME``, when the optional package timm is installed.

``timm:ARCH.TAG`` is one pretrained tag (``timm:convnext_tiny.fb_in22k``); ``timm:ARCH`` is the
architecture's default tag, as in ``timm.create_model`` (its features are keyed under the tagged
name), or the bare architecture where timm has no weights for it. The names come from timm's own
registry when first asked for; timm itself (seconds to import) is imported only then.

- Preprocessing is what timm's ``resolve_data_config`` / ``create_transform`` build from the tag's
  pretrained config (size, crop, interpolation, mean, std, crop mode), read off that transform.
- Penultimate features are timm's: ``forward_head(forward_features(x), pre_logits=True)``
  (:class:`featcache.extraction.layers.FeatureExtractor`).
- Weights (``--weights``): ``DEFAULT`` (or the tag) is the tag's file in the Hugging Face cache
  (``HF_HOME``), downloaded there unless ``HF_HUB_OFFLINE=1``; a local ``.safetensors`` / ``.pth``
  state dict; or ``none`` (seeded random init). Files are read without running code.
- The key holds the timm version (``source: timm==X``), the tag and the weights file's digest.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featcache.atomic import atomic_write_text
from featcache.errors import FeatcacheError, UnknownNameError, WeightsError
from featcache.extraction.backbones.registry import (
    BackboneEntry,
    BackboneSource,
    Preprocess,
    WeightsChoice,
    file_digest,
    load_state_dict_file,
    register_source,
    registered_sources,
)
from featcache.extraction.backbones.shapes import skeleton

PREFIX = "timm:"
INSTALL = "pip install 'featcache[timm]'"
DIMS_AT_ONCE = 64  # a listing computes missing dims (~0.2 s each, meta device) for at most this many rows
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _timm(name: str = "timm backbones"):
    """The timm module, imported on first use (optional, and it takes seconds to import)."""
    try:
        import timm  # optional extra, imported only when a timm: name is used
    except ImportError:
        raise FeatcacheError(not_installed(name)) from None
    return timm


def not_installed(what: str) -> str:
    return f"{what}: the package timm is not installed; install it with: {INSTALL}"


def installed() -> bool:
    return importlib.util.find_spec("timm") is not None


@functools.lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    """``timm:ARCH.TAG`` for every pretrained tag, ``timm:ARCH`` for architectures without one."""
    if not installed():
        return ()
    timm = _timm()
    tagged = timm.list_models(pretrained=True)
    with_tags = {n.split(".")[0] for n in tagged}
    return tuple(PREFIX + n for n in [*tagged, *(a for a in timm.list_models() if a not in with_tags)])


def has_weights(cfg) -> bool:
    return bool(cfg.hf_hub_id or cfg.url)


def canonical(name: str) -> str:
    """``timm:ARCH[.TAG]`` -> the tagged model name timm would load (``ARCH.TAG``, or ``ARCH``)."""
    timm = _timm(f"backbone {name!r}")
    model = name[len(PREFIX):]
    arch, _, tag = model.partition(".")
    if not timm.is_model(arch):
        raise UnknownNameError("timm model", name, timm_names(),
                               hint="`featcache backbones --source timm` lists them")
    tags = [n.partition(".")[2] for n in timm.models.get_arch_pretrained_cfgs(arch)]
    if tag and tag not in tags:
        raise UnknownNameError(f"pretrained tag of {PREFIX}{arch}", tag, tags,
                               hint=f"name a tag as {PREFIX}{arch}.TAG, or use {PREFIX}{arch} for its default")
    cfg = timm.models.get_pretrained_cfg(model)
    return f"{arch}.{cfg.tag}" if has_weights(cfg) else arch


def timm_entry(name: str) -> BackboneEntry:
    return entry_for_model(canonical(name))


@functools.lru_cache(maxsize=None)
def entry_for_model(model: str) -> BackboneEntry:
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(model)
    tags = [cfg.tag] if has_weights(cfg) else []
    return TimmEntry(
        name=PREFIX + model,
        source="timm",
        builder=functools.partial(_create, model),
        weights_names=lambda: list(tags),
        default_weights=lambda: tags[0] if tags else None,
        resolve_named_weights=functools.partial(_resolve_named, model),
        default_preprocess=functools.partial(timm_preprocess, model),
        load_named_weights=lambda choice: load_pretrained(choice).state_dict(),
        build_kwargs=functools.partial(head_kwargs, model),
        version=timm.__version__,
    )


def head_kwargs(model: str, choice: WeightsChoice | None) -> dict:
    """``num_classes`` of a local weights file whose classifier differs from the tag's (a fine-tuned
    model, or one saved without its head), so that the file loads; {} otherwise."""
    if choice is None or choice.kind != "file":
        return {}
    cfg = _timm().models.get_pretrained_cfg(model)
    classifier = cfg.classifier[0] if isinstance(cfg.classifier, (tuple, list)) else cfg.classifier
    shapes = state_shapes(choice.path, os.path.getmtime(choice.path))
    n = shapes[f"{classifier}.weight"][0] if f"{classifier}.weight" in shapes else 0
    return {} if n == cfg.num_classes or not classifier else {"num_classes": int(n)}


@functools.lru_cache(maxsize=8)
def state_shapes(path: str, _mtime: float) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a state-dict file (a safetensors file: from its header only)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open  # comes with timm

        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return {k: tuple(v.shape) for k, v in load_state_dict_file(path).items()}


def _create(model: str, **kwargs) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's notes on deprecated names and defaults
        module = _timm().create_model(model, pretrained=False, **kwargs)
    fixed = fixed_input_size(module)
    if fixed is not None:
        module.image_size = fixed  # where the registry looks for a one-size network (as torchvision's ViT)
    return module


def fixed_input_size(module: nn.Module) -> int | None:
    """The one square input size a timm model takes (a strict patch embedding, e.g. ViTs), else None."""
    embed = getattr(module, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    strict = getattr(embed, "strict_img_size", False) and not getattr(embed, "dynamic_img_size", False)
    if strict and isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return None


def load_pretrained(choice: WeightsChoice) -> nn.Module:
    """The model with a pretrained tag's file loaded as timm loads it (its checkpoint filter and
    class-count rules); the file itself is read without running code."""
    state = load_state_dict_file(choice.path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _timm().create_model(choice.label, pretrained=True, pretrained_cfg_overlay={"state_dict": state})


class TimmEntry(BackboneEntry):
    """A timm model: the registry's entry, loading pretrained tags through timm."""

    def build(self, weights: WeightsChoice) -> nn.Module:
        if weights.kind != "timm":
            return super().build(weights)  # none (seeded) or a local file, applied strictly
        return load_pretrained(weights).eval()

    def feature_dim(self) -> int:
        """The width timm defines for the pre-logits features (built on the meta device)."""
        return pre_logits_dim(skeleton(self))


def pre_logits_dim(module: nn.Module) -> int:
    """Width of ``forward_head(..., pre_logits=True)``: the head's hidden size, else ``num_features``."""
    return int(getattr(module, "head_hidden_size", None) or module.num_features)


# --------------------------------------------------------------------------- preprocessing


@functools.lru_cache(maxsize=None)
def timm_preprocess(model: str) -> Preprocess:
    """The preprocessing of ``timm.data.create_transform(**resolve_data_config(tag's config))``."""
    from timm.data import create_transform, resolve_data_config  # optional extra

    cfg = _timm().models.get_pretrained_cfg(model)
    transform = create_transform(**resolve_data_config(pretrained_cfg=cfg.to_dict()), is_training=False)
    return preprocess_of(transform, PREFIX + model)


def preprocess_of(transform, name: str) -> Preprocess:
    """A :class:`Preprocess` equal to a timm eval transform (Resize, CenterCrop, ToTensor, Normalize)."""
    from torchvision import transforms as T  # torchvision: only where a transform is read

    found: dict = {}
    for step in getattr(transform, "transforms", [transform]):
        kind = type(step).__name__
        if isinstance(step, T.Resize):
            size = [step.size] if isinstance(step.size, int) else list(step.size)
            if len(size) == 2 and size[0] != size[1]:
                raise _unsupported(name, f"a resize to {size[0]}x{size[1]} px (not square)")
            found.update(resize=int(size[0]), crop_mode="squash" if len(size) == 2 else "center",
                         interpolation=str(step.interpolation.value), antialias=step.antialias is not False)
        elif isinstance(step, T.CenterCrop):
            h, w = step.size
            if h != w:
                raise _unsupported(name, f"a crop to {h}x{w} px (not square)")
            found["crop"] = int(h)
        elif isinstance(step, T.Normalize):
            found.update(mean=_decimals(step.mean), std=_decimals(step.std))
        elif kind not in ("ToTensor", "MaybeToTensor"):
            raise _unsupported(name, f"the step {kind}")
    missing = {"resize", "crop", "mean", "std"} - set(found)
    if missing:
        raise _unsupported(name, f"no {', '.join(sorted(missing))}")
    return Preprocess(**found)


def _decimals(values) -> tuple[float, ...]:
    """The config's decimals back from timm's float32 tensor (0.485, not 0.48500001430511475)."""
    return tuple(float(str(np.float32(v))) for v in values)


def _unsupported(name: str, what: str) -> WeightsError:
    return WeightsError(f"timm's preprocessing of {name} has {what}, which featcache cannot reproduce (it resizes "
                        "and centre-crops to a square); pass --image-size S to use a square S px crop instead")


# --------------------------------------------------------------------------- weights


def _resolve_named(model: str, spec: str) -> WeightsChoice:
    cfg = _timm().models.get_pretrained_cfg(model)
    arch, tag = cfg.architecture, cfg.tag
    valid = ["DEFAULT", tag, "none"] if has_weights(cfg) else ["none"]
    if not has_weights(cfg) or (spec.upper() != "DEFAULT" and spec not in (tag, model)):
        others = [n for n in _timm().models.get_arch_pretrained_cfgs(arch) if n != model][:4]
        hint = "or pass a local .safetensors / .pth state-dict file"
        raise UnknownNameError(f"weights for {PREFIX}{model}", spec, valid,
                               hint=hint + (f"; other tags are other backbones, e.g. {PREFIX}{others[0]}"
                                            if others else ""))
    if cfg.custom_load:
        raise WeightsError(f"the weights of {PREFIX}{model} are loaded by timm's own code for their format "
                           "(custom_load), which featcache does not run; pass --weights FILE with a state dict "
                           "saved from the loaded model (safetensors.torch.save_file(model.state_dict(), FILE))")
    path = weights_file(model, cfg)
    return WeightsChoice(label=model, digest=weights_digest(path), preprocess=timm_preprocess(model),
                         kind="timm", path=path)


def weights_digest(path: str) -> str:
    """sha256 of the file: the Hugging Face cache's blob name when it is one, else computed."""
    real = Path(path).resolve()
    if real.parent.name == "blobs" and _SHA256.fullmatch(real.name):
        return f"sha256:{real.name}"
    return f"sha256:{file_digest(real)}"


def hub_filenames(cfg) -> list[str]:
    """The files timm tries in the tag's Hugging Face repository, safetensors first."""
    name = cfg.hf_hub_filename or "pytorch_model.bin"
    if name.endswith(".safetensors"):
        return [name]
    safe = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    alt = safe.get(name, name[: -len(".bin")] + ".safetensors" if name.endswith(".bin") else None)
    return [alt, name] if alt else [name]


def torch_hub_file(cfg) -> Path:
    """Where timm keeps the file of a tag that has only a URL (torch's hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)


def cached_file(cfg) -> str | None:
    """The local path of a tag's weights file when it is already there, else None."""
    if not cfg.hf_hub_id:
        path = torch_hub_file(cfg)
        return str(path) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache  # comes with timm

    repo, _, revision = cfg.hf_hub_id.partition("@")
    hits = (try_to_load_from_cache(repo, n, revision=revision or None) for n in hub_filenames(cfg))
    return next((h for h in hits if isinstance(h, str)), None)


def weights_file(model: str, cfg) -> str:
    """The local path of a tag's weights: timm's Hugging Face cache (downloading unless offline),
    or for URL-only tags torch's hub cache. Raises WeightsError naming the file and the fixes."""
    found = cached_file(cfg)
    if found is not None:
        return found
    if not cfg.hf_hub_id:
        path = torch_hub_file(cfg)
        raise _missing(model, str(path), "not there", f"download {cfg.url} to that path", path.name)
    from huggingface_hub import constants, hf_hub_download  # comes with timm

    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = hub_filenames(cfg)
    looked = f"{constants.HF_HUB_CACHE}/models--{repo.replace('/', '--')}/snapshots/*/{names[0]}"
    fetch = f"where there is network: `hf download {repo} {names[0]}`; HF_HOME chooses the cache folder"
    if constants.is_offline_mode():
        raise _missing(model, looked, "HF_HUB_OFFLINE=1", fetch, names[0])
    why = "not found"
    for name in names:
        try:
            return hf_hub_download(repo, name, revision=revision or None)
        except Exception as e:  # noqa: BLE001 - no network, no such file, ...: try the next, then explain
            why = f"download failed: {type(e).__name__}"
    raise _missing(model, looked, why, fetch, names[0])


def _missing(model: str, looked: str, why: str, fetch: str, filename: str) -> WeightsError:
    return WeightsError(
        f"cannot find the weights of {PREFIX}{model}: {looked} is not there ({why}). Fix: put the file there "
        f"({fetch}), or pass --weights /path/to/{filename} (a .safetensors or .pth state dict)")


# --------------------------------------------------------------------------- listing


def describe(cache_dir: str | os.PathLike | None, names: list[str], dims: bool = False) -> list[dict]:
    """Rows of ``featcache backbones`` for these timm names; dims cached per timm version."""
    if not names:
        return []
    timm = _timm()
    known = _read_dims(cache_dir, timm.__version__)
    entries = [entry_for_model(canonical(n)) for n in names]
    missing = [e for e in entries if e.name not in known]
    if missing and (dims or len(missing) <= DIMS_AT_ONCE):
        known.update({e.name: e.feature_dim() for e in missing})
        _write_dims(cache_dir, timm.__version__, known)
    rows = []
    for name, e in zip(names, entries):
        cfg = timm.models.get_pretrained_cfg(e.name[len(PREFIX):])
        rows.append({"name": name, "source": "timm", "dim": known.get(e.name), "default_weights": e.default_weights(),
                     "weights": e.weights_names(), "cached": has_weights(cfg) and cached_file(cfg) is not None})
    return rows


def _dims_file(cache_dir, version: str) -> Path | None:
    return Path(cache_dir) / f".timm-dims-{version}.json" if cache_dir is not None else None


def _read_dims(cache_dir, version: str) -> dict:
    f = _dims_file(cache_dir, version)
    try:
        return dict(json.loads(f.read_text())) if f is not None and f.is_file() else {}
    except (ValueError, TypeError, OSError):
        return {}


def _write_dims(cache_dir, version: str, dims: dict) -> None:
    f = _dims_file(cache_dir, version)
    if f is None:
        return
    try:
        atomic_write_text(f, json.dumps(dims, sort_keys=True))
    except OSError:
        pass  # a read-only cache: the dims are computed again next time


def missing() -> str | None:
    return None if installed() else not_installed("--source timm")


def register() -> None:
    """Register the ``timm:`` names (made into entries when asked for; timm is not imported here)."""
    if all(s.prefix != PREFIX for s in registered_sources()):
        register_source(BackboneSource(name="timm", prefix=PREFIX, names=timm_names, entry=timm_entry,
                                       describe=describe, missing=missing))
