"""The pipeline file: its TOML schema, parsing and validation.

:func:`load_pipeline` reads a pipeline TOML file and :func:`parse_pipeline`
validates an already parsed document; both return a frozen :class:`Pipeline`
(a tree of dataclasses) or raise :class:`PipelineError`. Running a pipeline is
:func:`featcache.pipeline.runner.run_pipeline`.

The TOML is parsed with :mod:`tomllib` (data only, nothing is executed). The
schema is documented in ``docs/pipelines.md``; in short::

    name = "demo"                  # optional, default: the file name; [A-Za-z0-9_.+-]
    description = "..."            # optional
    cache = "cache"                # optional store folder (see resolve_cache_dir)
    [data]        source (required), path_column, label_column, split_column, root,
                  tv_split, labelled, download
    [split]       val_fraction, test_fraction, seed
    [extract]     batch_size, workers, device, on_error, flush_every   (speed / policy only)
                  augment, augment_seed   (cached augmented copies: a feature set of their own)
    [[backbones]] name (required), label, weights, layer, pool, image_size, precision, dtype, decode
    [[heads]]     name (required), label, params, grid, sweep, backbones

Unknown keys are :class:`~featcache.errors.UnknownNameError` (with close matches and
the valid keys); wrong types are :class:`PipelineError` naming the key and the
expected type. Relative paths in the file (data ``source`` and ``root``, a weights
file, ``cache``) are relative to the folder of the TOML file.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featcache.extraction.decoders import DECODE_MODES
from featcache.errors import FeatcacheError, UnknownNameError
from featcache.extraction.backbones.weights_names import looks_like_path
from featcache.store.resolutions import ResolutionIndex

__all__ = [
    "BackboneSpec",
    "DataSpec",
    "ExtractSpec",
    "HeadSpec",
    "Pipeline",
    "PipelineError",
    "SplitSpec",
    "load_pipeline",
    "parse_pipeline",
]


class PipelineError(FeatcacheError, ValueError):
    """A pipeline file that cannot be read, or a pipeline that cannot run."""



@dataclass(frozen=True)
class DataSpec:
    """``[data]``: the arguments of :func:`featcache.extraction.sources.load_manifest` (paths made absolute)."""

    source: str
    path_column: str = "path"
    label_column: str | None = "label"
    split_column: str | None = None
    root: str | None = None
    tv_split: str = "all"
    labelled: bool = True
    download: bool = False


@dataclass(frozen=True)
class SplitSpec:
    """``[split]``: the seeded stratified split used when the data has no split of its own."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0


@dataclass(frozen=True)
class ExtractSpec:
    """``[extract]``: options of stage one that do not change the (plain) features.

    ``augment = N`` (> 0) also caches N seeded augmented copies of every training
    image per backbone (see :mod:`featcache.extraction.augment`), and every head then trains on
    the plain training rows plus their copies; evaluation stays on plain features.
    The copies are a feature set of their own (the augmentation policy and
    ``augment_seed`` are part of its identity), so the plain feature key of each
    backbone is the same with or without ``augment``. Pipeline-wide, as the split is.
    """

    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    on_error: str = "fail"
    flush_every: float = 60.0
    augment: int = 0  # augmented copies per training image; 0 = none
    augment_seed: int = 0  # seed of the copies (part of the augmented set's identity)


@dataclass(frozen=True)
class BackboneSpec:
    """One ``[[backbones]]`` entry: everything that identifies a feature set."""

    label: str
    name: str
    weights: str = "DEFAULT"
    layer: str = "penultimate"
    pool: str = "avg"
    image_size: int | None = None
    precision: str = "auto"
    dtype: str = "float32"
    decode: str = "workers"


@dataclass(frozen=True)
class HeadSpec:
    """One ``[[heads]]`` entry: a head, fixed parameters, a grid to sweep, where it applies."""

    label: str
    name: str
    params: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    sweep: bool = False
    backbones: tuple[str, ...] | None = None  # labels; None = every backbone


@dataclass(frozen=True)
class Pipeline:
    name: str
    data: DataSpec
    backbones: tuple[BackboneSpec, ...]
    heads: tuple[HeadSpec, ...]
    split: SplitSpec = SplitSpec()
    extract: ExtractSpec = ExtractSpec()
    cache: str | None = None
    description: str = ""
    path: str | None = None  # the TOML file it came from

    def heads_for(self, backbone: BackboneSpec) -> list[HeadSpec]:
        return [h for h in self.heads if h.backbones is None or backbone.label in h.backbones]


# key -> (type, example). Types: string, integer, number, boolean, table, array of tables,
# array of strings, any (head parameter values), array (grid values).
_TOP = {
    "name": ("string", '"demo"'),
    "description": ("string", '"what this compares"'),
    "cache": ("string", '"cache"'),
    "data": ("table", '[data] source = "images/"'),
    "split": ("table", "[split] val_fraction = 0.15"),
    "extract": ("table", "[extract] batch_size = 64"),
    "backbones": ("array of tables", '[[backbones]] name = "resnet18"'),
    "heads": ("array of tables", '[[heads]] name = "logreg"'),
}
_DATA = {
    "source": ("string", '"images/", "train.csv", "builtin:digits" or "torchvision:CIFAR10"'),
    "path_column": ("string", '"image_names"'),
    "label_column": ("string", '"emergency_or_no" ("" for unlabelled)'),
    "split_column": ("string", '"split"'),
    "root": ("string", '"images/"'),
    "tv_split": ("string", '"all", "train" or "test"'),
    "labelled": ("boolean", "true"),
    "download": ("boolean", "false"),
}
_SPLIT = {
    "val_fraction": ("number", "0.15"),
    "test_fraction": ("number", "0.15"),
    "seed": ("integer", "0"),
}
_EXTRACT = {
    "batch_size": ("integer", "64"),
    "workers": ("integer", "4"),
    "device": ("string", '"auto", "cpu" or "cuda"'),
    "on_error": ("string", '"fail" or "skip"'),
    "flush_every": ("number", "60"),
    "augment": ("integer", "2"),
    "augment_seed": ("integer", "0"),
}
_BACKBONE = {
    "name": ("string", '"resnet18" (see `featcache backbones`)'),
    "label": ("string", '"vgg16-conv"'),
    "weights": ("string", '"DEFAULT", "IMAGENET1K_V1", "none" or "weights/vgg16.pth"'),
    "layer": ("string", '"penultimate" or "features"'),
    "pool": ("string", '"avg", "max" or "none"'),
    "image_size": ("integer", "224"),
    "precision": ("string", '"auto", "float32", "bfloat16" or "float16"'),
    "dtype": ("string", '"float32" or "float16"'),
    "decode": ("string", '"workers", "draft" or "device"'),
}
_HEAD = {
    "name": ("string", '"logreg" (see `featcache heads`)'),
    "label": ("string", '"mlp-small"'),
    "params": ("table", "{ hidden_sizes = [256], dropout = 0.2 }"),
    "grid": ("table", "{ weight_decay = [1e-4, 1e-3] }"),
    "sweep": ("boolean", "true"),
    "backbones": ("array of strings", '["vgg16-fc"]'),
}

_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_CHOICES = {
    ("data", "tv_split"): ("all", "train", "test"),
    ("extract", "on_error"): ("fail", "skip"),
    ("backbones", "pool"): ("avg", "max", "none"),
    ("backbones", "precision"): ("auto", "float32", "bfloat16", "float16"),
    ("backbones", "dtype"): ("float32", "float16"),
    ("backbones", "decode"): DECODE_MODES,
}


def _toml_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "table"
    if isinstance(v, list):
        return "array"
    return type(v).__name__  # dates and times


def _type_ok(kind: str, v: Any) -> bool:
    if kind == "string":
        return isinstance(v, str)
    if kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "boolean":
        return isinstance(v, bool)
    if kind == "table":
        return isinstance(v, dict)
    if kind == "array of tables":
        return isinstance(v, list) and all(isinstance(x, dict) for x in v)
    if kind == "array of strings":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    raise AssertionError(kind)


class _Ctx:
    """Where in which file: builds the error messages."""

    def __init__(self, file: str):
        self.file = file
        # backbones and (backbone, weights name) pairs resolved before in the store (no registry needed)
        self.known_names: set[str] = set()
        self.known_weights: set[tuple[str, str]] = set()

    def know(self, store: Path) -> None:
        """Take the backbones and weights names the resolution index of ``store`` resolves here and now."""
        options = ResolutionIndex(store).options_for()
        self.known_names = {o["backbone"] for o in options}
        self.known_weights = {(o["backbone"], o["weights"]) for o in options}

    def error(self, msg: str) -> PipelineError:
        return PipelineError(f"{self.file}: {msg}")

    def check(self, table: dict, where: str, spec: dict) -> dict:
        for k in table:
            if k not in spec:
                listed = not difflib.get_close_matches(str(k), sorted(spec), n=3, cutoff=0.5) and len(spec) <= 12
                raise UnknownNameError(  # the valid keys are listed either way
                    f"{where} key", k, spec,
                    hint=(f"in {self.file}" if listed else f"valid {where} keys: {', '.join(spec)}; in {self.file}"))
        for k, v in table.items():
            kind, example = spec[k]
            if not _type_ok(kind, v):
                got = _toml_type(v)
                if kind == "array of tables" and isinstance(v, dict):
                    got = "single table (write [[" + k + "]], not [" + k + "])"
                elif kind.startswith("array of") and isinstance(v, list):
                    got = "array with other items"
                shown = f"{k}" if kind in ("table", "array of tables") else f"{k} = {_short(v)}"
                fix = example if kind in ("table", "array of tables") else f"{k} = {example}"
                raise self.error(f"{where} {shown} is {_article(got)} {got}; expected {_article(kind)} {kind}, "
                                 f"e.g. {fix}")
        return table

    def choice(self, section: str, where: str, key: str, value: str) -> str:
        valid = _CHOICES[(section, key)]
        if value not in valid:
            raise UnknownNameError(f"{where} {key}", value, valid, hint=f"in {self.file}")
        return value

    def positive(self, where: str, key: str, value: int | float, minimum: int | float = 1) -> None:
        if value < minimum:
            raise self.error(f"{where} {key} = {value} is out of range; expected a value >= {minimum}")


def _article(kind: str) -> str:
    return "an" if kind[:1] in ("a", "e", "i", "o", "u") else "a"


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _resolve_path(p: str, base: Path) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def _tupled(v: Any) -> Any:
    """TOML arrays -> tuples (head parameters such as hidden_sizes = [512, 256])."""
    if isinstance(v, list):
        return tuple(_tupled(x) for x in v)
    return v


def load_pipeline(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Pipeline:
    """Read and validate a pipeline TOML file (never executes anything in it); ``cache_dir``: the store
    it will run on, if not its own (see :func:`store_folder`)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PipelineError(f"pipeline file {str(path)!r} does not exist; expected a TOML file such as "
                            "pipelines/demo.toml (see docs/pipelines.md)")
    try:
        with open(p, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{p}: not valid TOML ({e}); fix the syntax at that line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(f"cannot read pipeline file {str(p)!r} ({e})") from None
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "-", p.stem).strip("-.") or "pipeline"
    return parse_pipeline(doc, base_dir=p.resolve().parent, source=str(p), default_name=stem, cache_dir=cache_dir)


def parse_pipeline(doc: dict, *, base_dir: str | os.PathLike = ".", source: str = "<pipeline>",
                   default_name: str = "pipeline", cache_dir: str | os.PathLike | None = None) -> Pipeline:
    """Validate a parsed TOML document; relative paths resolve against ``base_dir``. Backbone and
    weights names resolved before in the store (``cache_dir``, else as :func:`store_folder` says)
    are taken as valid without the registry, so parsing imports no torch then."""
    ctx = _Ctx(source)
    base = Path(base_dir).resolve()
    if not isinstance(doc, dict):
        raise ctx.error("expected a TOML document (a table at the top)")
    ctx.check(doc, "top-level", _TOP)
    name = doc.get("name", default_name)
    if not _LABEL_RE.match(name):
        raise ctx.error(f"name = {name!r} cannot name a folder; expected letters, digits and _ . + - "
                        "(starting with a letter or digit), e.g. name = \"demo\"")

    if "data" not in doc:
        raise ctx.error('has no [data] table; expected e.g.\n[data]\nsource = "images/"   '
                        "# a folder, a CSV file, builtin:digits or torchvision:NAME")
    data = ctx.check(doc["data"], "[data]", _DATA)
    if "source" not in data:
        raise ctx.error('[data] has no source; expected e.g. source = "images/" (a folder of class '
                        'folders, relative to this file), "train.csv", "builtin:digits" or "torchvision:MNIST"')
    src = data["source"]
    if not src.strip():
        raise ctx.error("[data] source is empty; expected a folder, a CSV file, builtin:NAME or torchvision:NAME")
    if not src.startswith(("builtin:", "torchvision:")):
        src = _resolve_path(src, base)
    label_column = data.get("label_column", "label")
    data_spec = DataSpec(
        source=src,
        path_column=data.get("path_column", "path"),
        label_column=label_column or None,
        split_column=data.get("split_column") or None,
        root=_resolve_path(data["root"], base) if data.get("root") else None,
        tv_split=ctx.choice("data", "[data]", "tv_split", data.get("tv_split", "all")),
        labelled=data.get("labelled", True),
        download=data.get("download", False),
    )

    split = ctx.check(doc.get("split", {}), "[split]", _SPLIT)
    split_spec = SplitSpec(**{k: (float(v) if k != "seed" else v) for k, v in split.items()})
    for k in ("val_fraction", "test_fraction"):
        v = getattr(split_spec, k)
        if not 0.0 < v < 1.0 or math.isnan(v):
            raise ctx.error(f"[split] {k} = {v} is out of range; expected a fraction strictly between 0 and 1, "
                            f"e.g. {k} = 0.15")
    if split_spec.val_fraction + split_spec.test_fraction >= 1.0:
        raise ctx.error(f"[split] val_fraction + test_fraction = "
                        f"{split_spec.val_fraction + split_spec.test_fraction:g}; expected a sum below 1 "
                        "so that rows are left for training")

    ext = ctx.check(doc.get("extract", {}), "[extract]", _EXTRACT)
    ext_spec = ExtractSpec(
        batch_size=ext.get("batch_size", 64),
        workers=ext.get("workers"),
        device=ext.get("device", "auto"),
        on_error=ctx.choice("extract", "[extract]", "on_error", ext.get("on_error", "fail")),
        flush_every=float(ext.get("flush_every", 60.0)),
        augment=ext.get("augment", 0),
        augment_seed=ext.get("augment_seed", 0),
    )
    ctx.positive("[extract]", "batch_size", ext_spec.batch_size)
    if ext_spec.workers is not None:
        ctx.positive("[extract]", "workers", ext_spec.workers, 0)
    if ext_spec.flush_every <= 0:
        raise ctx.error(f"[extract] flush_every = {ext_spec.flush_every} is out of range; expected seconds > 0")
    if ext_spec.augment < 0:
        raise ctx.error(f"[extract] augment = {ext_spec.augment} is out of range; expected 0 (no augmented "
                        "copies) or a positive number of augmented copies per training image, e.g. augment = 2")

    cache = _resolve_path(doc["cache"], base) if doc.get("cache") else None
    ctx.know(store_folder(cache, cache_dir))
    backbones = _parse_backbones(doc.get("backbones"), ctx, base)
    heads = _parse_heads(doc.get("heads"), ctx, {b.label for b in backbones})
    return Pipeline(
        name=name, description=doc.get("description", ""), data=data_spec, split=split_spec,
        extract=ext_spec, backbones=backbones, heads=heads, cache=cache, path=source,
    )


def store_folder(pipeline_cache: str | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The store: ``cache_dir`` if given, else ``$FEATCACHE_CACHE``, else the pipeline's ``cache``, else ``cache``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("FEATCACHE_CACHE"):
        return Path(os.environ["FEATCACHE_CACHE"])
    return Path(pipeline_cache or "cache")


def _check_backbone(ctx: _Ctx, where: str, name: str, weights: str | None = None) -> None:
    """``name`` is a backbone and ``weights`` (when given) one of its weights names: known from the
    resolution index of the pipeline's store (no torch), else asked of the backbone registry."""
    if name in ctx.known_names and (weights is None or (name, weights) in ctx.known_weights):
        return
    # torch: the registry is torchvision's
    from featcache.extraction.backbones.registry import get_backbone, list_backbones

    try:
        entry = get_backbone(name)
    except UnknownNameError:
        raise UnknownNameError("backbone", name, list_backbones(),
                               hint=f"{where} in {ctx.file}; `featcache backbones` lists them") from None
    if weights is not None:
        entry.resolve_weights(weights)  # a name: validated now, loaded at extraction


def _parse_backbones(items, ctx: _Ctx, base: Path) -> tuple[BackboneSpec, ...]:
    if not items:
        raise ctx.error('declares no backbone; expected at least one\n[[backbones]]\nname = "resnet18"')
    out: list[BackboneSpec] = []
    for i, b in enumerate(items, start=1):
        where = f"[[backbones]] #{i}" + (f" ({b['name']})" if isinstance(b.get("name"), str) else "")
        ctx.check(b, where, _BACKBONE)
        if "name" not in b:
            raise ctx.error(f"{where} has no name; expected e.g. name = \"resnet18\" (see `featcache backbones`)")
        name = b["name"]
        _check_backbone(ctx, where, name)
        weights = b.get("weights", "DEFAULT")
        if weights.lower() not in ("none", "default") and looks_like_path(weights):
            weights = _resolve_path(weights, base)
            if not Path(weights).is_file():
                raise ctx.error(f"{where} weights = {b['weights']!r}: no such file ({weights}); expected a "
                                "state-dict file (relative paths are relative to this TOML file), DEFAULT, "
                                "a weights name or none")
        else:
            _check_backbone(ctx, where, name, weights)
        size = b.get("image_size")
        if size is not None:
            ctx.positive(where, "image_size", size, 8)
        spec = BackboneSpec(
            label=b.get("label", name), name=name, weights=weights, layer=b.get("layer", "penultimate"),
            pool=ctx.choice("backbones", where, "pool", b.get("pool", "avg")), image_size=size,
            precision=ctx.choice("backbones", where, "precision", b.get("precision", "auto")),
            dtype=ctx.choice("backbones", where, "dtype", b.get("dtype", "float32")),
            decode=ctx.choice("backbones", where, "decode", b.get("decode", "workers")))
        if not spec.layer:
            raise ctx.error(f'{where} layer is empty; expected "penultimate" or a module name such as "features"')
        _check_label(ctx, where, spec.label, [o.label for o in out], "backbones")
        out.append(spec)
    return tuple(out)


def _parse_heads(items, ctx: _Ctx, backbone_labels: set[str]) -> tuple[HeadSpec, ...]:
    from featcache.train.heads import list_heads, make_head

    if not items:
        raise ctx.error('declares no head; expected at least one\n[[heads]]\nname = "logreg"')
    out: list[HeadSpec] = []
    for i, h in enumerate(items, start=1):
        where = f"[[heads]] #{i}" + (f" ({h['name']})" if isinstance(h.get("name"), str) else "")
        ctx.check(h, where, _HEAD)
        if "name" not in h:
            raise ctx.error(f"{where} has no name; expected e.g. name = \"logreg\" (see `featcache heads`)")
        name = h["name"]
        if name not in list_heads():
            raise UnknownNameError("head", name, list_heads(), hint=f"{where} in {ctx.file}; see `featcache heads`")
        params = {k: _tupled(v) for k, v in h.get("params", {}).items()}
        grid = {}
        for k, v in h.get("grid", {}).items():
            if not isinstance(v, list) or not v:
                raise ctx.error(f"{where} grid.{k} = {_short(v)} is not a list of values; expected a non-empty "
                                f"array to sweep, e.g. grid = {{ {k} = [...] }} (a single value goes in params)")
            grid[k] = [_tupled(x) for x in v]
        try:  # the parameter names, checked now rather than after extraction
            make_head(name, **params, **{k: v[0] for k, v in grid.items() if k not in params})
        except FeatcacheError as e:
            raise ctx.error(f"{where}: {e}") from None
        targets = h.get("backbones")
        if targets is not None:
            for t in targets:
                if t not in backbone_labels:
                    raise UnknownNameError(f"backbone label in {where} backbones", t, backbone_labels,
                                           hint=f"in {ctx.file}; labels default to the backbone's name")
            targets = tuple(targets)
        spec = HeadSpec(label=h.get("label", name), name=name, params=params, grid=grid,
                        sweep=h.get("sweep", False), backbones=targets)
        _check_label(ctx, where, spec.label, [o.label for o in out], "heads")
        out.append(spec)
    return tuple(out)


def _check_label(ctx: _Ctx, where: str, label: str, taken: list[str], table: str) -> None:
    if not _LABEL_RE.match(label):
        raise ctx.error(f"{where} label = {label!r} cannot name a file; expected letters, digits and _ . + - "
                        "(starting with a letter or digit)")
    if label in taken:
        raise ctx.error(f"{where}: two [[{table}]] are labelled {label!r}; give each a distinct "
                        f'label = "..." (the label defaults to the name)')
