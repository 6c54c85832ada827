"""The pipeline file: its TOML schema, parsing and validation.

:func:`load_pipeline` reads a pipeline TOML file and :func:`parse_pipeline`
validates an already parsed document; both return a frozen :class:`Pipeline`
(a tree of dataclasses) or raise :class:`PipelineError`. Running a pipeline is
:func:`featcache.pipeline.runner.run_pipeline`.

The tables ``[data]``, ``[extract]`` and ``[[backbones]]`` take the fields of the specs in
:mod:`featcache.specs` (their keys, types and choices are read from those dataclasses), so a
pipeline builds the same DataSpec, RunSpec and BackboneSpec objects as the CLI and the
Python API. The TOML is parsed with :mod:`tomllib` (data only, nothing is executed). The
schema is documented in ``docs/pipelines.md``; in short::

    name = "demo"                  # optional, default: the file name; [A-Za-z0-9_.+-]
    description = "..."            # optional
    cache = "cache"                # optional store folder (see resolve_cache_dir)
    [data]        source (required) and the other DataSpec fields: path_column, label_column,
                  split_column, root, tv_split, labelled, download
    [split]       val_fraction, test_fraction, seed
    [extract]     the RunSpec fields (batch_size, workers, device, on_error, flush_every, flush_rows, compute;
                  speed / policy only), and augment, augment_seed (cached augmented copies: a
                  feature set of their own, for every backbone)
    [[backbones]] name (required), label, and the BackboneSpec fields: weights, layer, pool,
                  image_size, precision, dtype, decode
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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from featcache.errors import FeatcacheError, UnknownNameError
from featcache.extraction.weights_names import looks_like_path
from featcache.specs import BackboneSpec, DataSpec, RunSpec
from featcache.store.resolutions import ResolutionIndex

__all__ = [
    "BackboneSpec",
    "DataSpec",
    "ExtractSpec",
    "HeadSpec",
    "LabelledBackbone",
    "RunSpec",
    "Pipeline",
    "PipelineError",
    "SplitSpec",
    "load_pipeline",
    "parse_pipeline",
]


class PipelineError(FeatcacheError, ValueError):
    """A pipeline file that cannot be read, or a pipeline that cannot run."""



@dataclass(frozen=True)
class SplitSpec:
    """``[split]``: the seeded stratified split used when the data has no split of its own."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0


@dataclass(frozen=True)
class ExtractSpec:
    """``[extract]``: how stage one runs (a :class:`~featcache.specs.RunSpec`) and the augmented
    copies every backbone caches.

    ``augment = N`` (> 0) also caches N seeded augmented copies of every training
    image per backbone (see :mod:`featcache.extraction.augment`), and every head then trains on
    the plain training rows plus their copies; evaluation stays on plain features.
    The copies are a feature set of their own (the augmentation policy and
    ``augment_seed`` are part of its identity), so the plain feature key of each
    backbone is the same with or without ``augment``. Pipeline-wide, as the split is:
    parsing copies them into every backbone's BackboneSpec.
    """

    run: RunSpec = RunSpec()
    augment: int = 0  # augmented copies per training image; 0 = none
    augment_seed: int = 0  # seed of the copies (part of the augmented set's identity)


@dataclass(frozen=True)
class LabelledBackbone:
    """One ``[[backbones]]`` entry: a label and the :class:`~featcache.specs.BackboneSpec` it names.

    The spec's fields read through (``b.weights``, ``b.layer``, ...); ``name`` is the backbone."""

    label: str
    spec: BackboneSpec

    @property
    def name(self) -> str:
        return self.spec.backbone

    def __getattr__(self, attr: str):
        if attr == "spec":  # not set yet (copying, unpickling)
            raise AttributeError(attr)
        return getattr(self.spec, attr)


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
    backbones: tuple[LabelledBackbone, ...]
    heads: tuple[HeadSpec, ...]
    split: SplitSpec = SplitSpec()
    extract: ExtractSpec = ExtractSpec()
    cache: str | None = None
    description: str = ""
    path: str | None = None  # the TOML file it came from

    def heads_for(self, backbone: LabelledBackbone) -> list[HeadSpec]:
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
_SPLIT = {
    "val_fraction": ("number", "0.15"),
    "test_fraction": ("number", "0.15"),
    "seed": ("integer", "0"),
}


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


_KINDS = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


def _schema_of(cls, keep=lambda name: True) -> dict:
    """TOML keys of a spec's fields: key -> (type, example), from the field's type, choices and default."""
    out = {}
    for f in fields(cls):
        if not keep(f.name):
            continue
        example = f.metadata.get("example")
        if example is None and f.metadata.get("choices"):
            *head, last = [json.dumps(c) for c in f.metadata["choices"]]
            example = f"{', '.join(head)} or {last}"
        out[f.name] = (_KINDS[f.type.split(" | ")[0]], example or _short(f.default))
    return out


#: BackboneSpec fields set pipeline-wide in [extract] (as the split is), not per backbone
_PIPELINE_WIDE = ("augment", "augment_seed")
_DATA = _schema_of(DataSpec)
_EXTRACT = {**_schema_of(RunSpec, lambda k: k not in ("cache_dir", "progress")),  # `cache` is top-level
            **_schema_of(BackboneSpec, lambda k: k in _PIPELINE_WIDE)}
_BACKBONE = {
    "name": ("string", '"resnet18" (see `featcache backbones`)'),
    "label": ("string", '"vgg16-conv"'),
    **_schema_of(BackboneSpec, lambda k: k != "backbone" and k not in _PIPELINE_WIDE),
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
        # backbones and (backbone, weights name) pairs the store resolved before: no registry needed
        self.known_names: set[str] = set()
        self.known_weights: set[tuple[str, str]] = set()

    def know(self, store: Path) -> None:
        """Take the backbones and weights names that the resolution index of ``store`` resolves here and now."""
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

    def choice(self, where: str, key: str, value: str, valid: tuple) -> str:
        if value not in valid:
            raise UnknownNameError(f"{where} {key}", value, valid, hint=f"in {self.file}")
        return value

    def positive(self, where: str, key: str, value: int | float, minimum: int | float = 1) -> None:
        if value < minimum:
            raise self.error(f"{where} {key} = {value} is out of range; expected a value >= {minimum}")


def _article(kind: str) -> str:
    return "an" if kind[:1] in ("a", "e", "i", "o", "u") else "a"


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
    it will run on, when not its own (see :func:`store_folder`)."""
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
    weights names that the store's resolution index (``cache_dir``, else as :func:`store_folder`
    says) resolved before need no registry: parsing then imports no torch."""
    ctx = _Ctx(source)
    base = Path(base_dir).resolve()
    if not isinstance(doc, dict):
        raise ctx.error("expected a TOML document (a table at the top)")
    ctx.check(doc, "top-level", _TOP)
    name = doc.get("name", default_name)
    if not _LABEL_RE.match(name):
        raise ctx.error(f"name = {name!r} cannot name a folder; expected letters, digits and _ . + - "
                        "(starting with a letter or digit), e.g. name = \"demo\"")
    data = _parse_data(doc, ctx, base)
    split = _parse_split(doc.get("split", {}), ctx)
    extract = _parse_extract(doc.get("extract", {}), ctx)
    cache = _resolve_path(doc["cache"], base) if doc.get("cache") else None
    ctx.know(store_folder(cache, cache_dir))
    backbones = _parse_backbones(doc.get("backbones"), ctx, base, extract)
    heads = _parse_heads(doc.get("heads"), ctx, {b.label for b in backbones})
    return Pipeline(name=name, description=doc.get("description", ""), data=data, split=split, extract=extract,
                    backbones=backbones, heads=heads, cache=cache, path=source)


def store_folder(pipeline_cache: str | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The store: ``cache_dir`` if given, else ``$FEATCACHE_CACHE``, else the pipeline's ``cache``, else ``cache``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("FEATCACHE_CACHE"):
        return Path(os.environ["FEATCACHE_CACHE"])
    return Path(pipeline_cache or "cache")


def _spec_values(ctx: _Ctx, table: dict, where: str, cls, keys) -> dict:
    """The values of ``table`` for fields ``keys`` of spec ``cls``: choices checked, numbers as floats."""
    out = {}
    for f in fields(cls):
        if f.name in table and f.name in keys:
            value = table[f.name]
            if f.metadata.get("choices"):
                ctx.choice(where, f.name, value, f.metadata["choices"])
            out[f.name] = float(value) if f.type == "float" else value
    return out


def _parse_data(doc: dict, ctx: _Ctx, base: Path) -> DataSpec:
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
    values = _spec_values(ctx, data, "[data]", DataSpec, _DATA)
    if not src.startswith(("builtin:", "torchvision:")):
        values["source"] = _resolve_path(src, base)
    for column in ("label_column", "split_column"):  # "" = none
        if column in values:
            values[column] = values[column] or None
    if values.get("root"):
        values["root"] = _resolve_path(values["root"], base)
    return DataSpec(**values)


def _parse_split(table: dict, ctx: _Ctx) -> SplitSpec:
    split = ctx.check(table, "[split]", _SPLIT)
    spec = SplitSpec(**{k: (float(v) if k != "seed" else v) for k, v in split.items()})
    for k in ("val_fraction", "test_fraction"):
        v = getattr(spec, k)
        if not 0.0 < v < 1.0 or math.isnan(v):
            raise ctx.error(f"[split] {k} = {v} is out of range; expected a fraction strictly between 0 and 1, "
                            f"e.g. {k} = 0.15")
    if spec.val_fraction + spec.test_fraction >= 1.0:
        raise ctx.error(f"[split] val_fraction + test_fraction = {spec.val_fraction + spec.test_fraction:g}; "
                        "expected a sum below 1 so that rows are left for training")
    return spec


def _parse_extract(table: dict, ctx: _Ctx) -> ExtractSpec:
    ext = ctx.check(table, "[extract]", _EXTRACT)
    run = RunSpec(**_spec_values(ctx, ext, "[extract]", RunSpec, _EXTRACT))
    ctx.positive("[extract]", "batch_size", run.batch_size)
    ctx.positive("[extract]", "flush_rows", run.flush_rows)
    if run.workers is not None:
        ctx.positive("[extract]", "workers", run.workers, 0)
    if run.flush_every <= 0:
        raise ctx.error(f"[extract] flush_every = {run.flush_every} is out of range; expected seconds > 0")
    spec = ExtractSpec(run=run, **_spec_values(ctx, ext, "[extract]", BackboneSpec, _PIPELINE_WIDE))
    if spec.augment < 0:
        raise ctx.error(f"[extract] augment = {spec.augment} is out of range; expected 0 (no augmented "
                        "copies) or a positive number of augmented copies per training image, e.g. augment = 2")
    return spec


def _parse_backbones(items, ctx: _Ctx, base: Path, extract: ExtractSpec) -> tuple[LabelledBackbone, ...]:
    if not items:
        raise ctx.error('declares no backbone; expected at least one\n[[backbones]]\nname = "resnet18"')
    out: list[LabelledBackbone] = []
    for i, b in enumerate(items, start=1):
        where = f"[[backbones]] #{i}" + (f" ({b['name']})" if isinstance(b.get("name"), str) else "")
        ctx.check(b, where, _BACKBONE)
        if "name" not in b:
            raise ctx.error(f"{where} has no name; expected e.g. name = \"resnet18\" (see `featcache backbones`)")
        _check_backbone(b["name"], where, ctx)
        values = _spec_values(ctx, b, where, BackboneSpec, _BACKBONE)
        values["weights"] = _weights(b["name"], values.get("weights", "DEFAULT"), where, ctx, base)
        if values.get("image_size") is not None:
            ctx.positive(where, "image_size", values["image_size"], 8)
        spec = BackboneSpec(backbone=b["name"], augment=extract.augment, augment_seed=extract.augment_seed,
                            **values)
        if not spec.layer:
            raise ctx.error(f'{where} layer is empty; expected "penultimate" or a module name such as "features"')
        label = b.get("label", b["name"].replace(":", "-"))  # timm:x -> timm-x: labels name files
        _check_label(ctx, where, label, [o.label for o in out], "backbones")
        out.append(LabelledBackbone(label=label, spec=spec))
    return tuple(out)


def _check_backbone(name: str, where: str, ctx: _Ctx, weights: str | None = None) -> None:
    """``name`` is a backbone and ``weights`` (when given) one of its weights names: known from the
    store's resolution index (no torch), else asked of the backbone registry."""
    if name in ctx.known_names and (weights is None or (name, weights) in ctx.known_weights):
        return
    # torch: the registry is torchvision's
    from featcache.extraction.backbones import get_backbone, list_backbones

    try:
        entry = get_backbone(name)
    except UnknownNameError:
        raise UnknownNameError("backbone", name, list_backbones(),
                               hint=f"{where} in {ctx.file}; `featcache backbones` lists them") from None
    if weights is not None:
        entry.resolve_weights(weights)  # a name: validated now, loaded at extraction


def _weights(name: str, weights: str, where: str, ctx: _Ctx, base: Path) -> str:
    """A weights name, validated now (loaded at extraction), or a file path made absolute."""
    if weights.lower() in ("none", "default") or not looks_like_path(weights):
        _check_backbone(name, where, ctx, weights)
        return weights
    path = _resolve_path(weights, base)
    if not Path(path).is_file():
        raise ctx.error(f"{where} weights = {weights!r}: no such file ({path}); expected a "
                        "state-dict file (relative paths are relative to this TOML file), DEFAULT, "
                        "a weights name or none")
    return path


def _parse_heads(items, ctx: _Ctx, backbone_labels: set[str]) -> tuple[HeadSpec, ...]:
    from featcache.train.heads import check_head, list_heads

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
        try:  # parameter names and values, checked now rather than after extraction
            check_head(name, params, grid)
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
