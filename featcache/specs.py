"""The options of an extraction, defined once: what to read, what to compute, how to run.

Three frozen dataclasses, built by every entry point (the CLI, a pipeline file, a saved
head's identity, the Python API) and taken by :func:`featcache.extract`:

- :class:`DataSpec`: the data source and how to read it (folder, CSV, builtin:, torchvision:);
- :class:`BackboneSpec`: everything that feeds the feature identity (backbone, weights,
  layer, pooling, image size, precision, storage dtype, decoder, augmented copies);
- :class:`RunSpec`: how to run, which never changes the numbers (batch size, workers,
  device, error policy, flush interval, the store folder, progress bars).

Adding an extraction option means: a field here, its CLI declaration (``featcache.cli``),
the code that uses it. This module imports nothing heavy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

from featcache.errors import UnknownNameError

POOLS = ("avg", "max", "none")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DTYPES = ("float32", "float16")
DECODE_MODES = ("workers", "draft", "device")
ON_ERROR = ("fail", "skip")
TV_SPLITS = ("all", "train", "test")
COMPUTE_MODES = ("auto", "plain")  # featcache.extraction.levers


def option(default, *, choices: tuple | None = None, example: str | None = None):
    """A spec field; ``choices`` (the valid values) and ``example`` (a typical value, as TOML)
    are read by the entry points that declare or validate it."""
    return field(default=default, metadata={"choices": choices, "example": example})


def choices(cls, name: str) -> tuple | None:
    return next(f.metadata.get("choices") for f in fields(cls) if f.name == name)


@dataclass(frozen=True)
class DataSpec:
    """What to read: the arguments of :func:`featcache.extraction.sources.load_manifest`."""

    source: str = field(metadata={"example": '"images/", "train.csv", "builtin:digits" or "torchvision:CIFAR10"'})
    path_column: str = "path"
    label_column: str | None = option("label", example='"label" ("" for unlabelled)')
    split_column: str | None = option(None, example='"split"')
    root: str | None = option(None, example='"images/"')
    tv_split: str = option("all", choices=TV_SPLITS)
    labelled: bool = True
    download: bool = False


@dataclass(frozen=True)
class BackboneSpec:
    """What to compute: every option that changes the features (and so their key).

    ``augment = N`` (> 0) also caches N seeded augmented copies of every training image in a
    feature set of its own (``augment_seed`` and the policy are part of that set's identity;
    the plain set's key is the same with or without ``augment``).
    """

    backbone: str = "efficientnet_lite0"
    weights: str = option("DEFAULT", example='"DEFAULT", "IMAGENET1K_V1", "none" or "weights/vgg16.pth"')
    layer: str = option("penultimate", example='"penultimate" or "features"')
    pool: str = option("avg", choices=POOLS)
    image_size: int | None = option(None, example="224")
    precision: str = option("auto", choices=PRECISIONS)
    dtype: str = option("float32", choices=DTYPES)
    decode: str = option("workers", choices=DECODE_MODES)
    augment: int = option(0, example="2")
    augment_seed: int = 0


@dataclass(frozen=True)
class RunSpec:
    """How to run: options that never change the numbers."""

    cache_dir: str | os.PathLike | None = None
    batch_size: int = 64
    workers: int | None = option(None, example="4")  # None: cores - 1, at most 8 (every core on 1-2 cores)
    device: str = option("auto", example='"auto", "cpu" or "cuda"')
    on_error: str = option("fail", choices=ON_ERROR)
    flush_every: float = 60.0  # seconds between row flushes
    flush_rows: int = 8192  # rows between row flushes
    progress: bool = False
    # CPU inference levers (float rounding only, so not in the key): "auto" by rule, or the ones the
    # feature set recorded; "plain" = the plain eager forward (featcache.extraction.levers)
    compute: str = option("auto", choices=COMPUTE_MODES)


SPECS = (DataSpec, BackboneSpec, RunSpec)

#: keyword -> the spec that owns it (``source`` is the data argument itself)
OWNER = {f.name: cls for cls in SPECS for f in fields(cls) if f.name != "source"}

#: older keyword spellings of the Python API
ALIASES = {"flush_seconds": "flush_every"}


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def specs_from_keywords(data, backbone: BackboneSpec | str | None = None, run: RunSpec | None = None,
                        **options):
    """(data, BackboneSpec, RunSpec) from the Python API's arguments: the one place keywords become specs.

    ``data`` is a source string or path (-> a :class:`DataSpec`), a DataSpec, or anything else
    (a manifest), returned as it is; ``backbone`` a name or a BackboneSpec; ``options`` any
    field of the three specs, applied on top.
    """
    given: dict = {cls: {} for cls in SPECS}
    for name, value in options.items():
        name = ALIASES.get(name, name)
        if name not in OWNER:
            raise UnknownNameError("extraction option", name, OWNER,
                                   hint="options are the fields of DataSpec, BackboneSpec and RunSpec")
        given[OWNER[name]][name] = value
    if backbone is None or isinstance(backbone, str):
        backbone = BackboneSpec(**({"backbone": backbone} if backbone else {}))
    backbone = replace(backbone, **given[BackboneSpec])
    run = replace(run or RunSpec(), **given[RunSpec])
    if isinstance(data, (str, os.PathLike)):
        data = DataSpec(source=os.fspath(data), **given[DataSpec])
    elif isinstance(data, DataSpec):
        data = replace(data, **given[DataSpec])
    elif given[DataSpec]:
        raise UnknownNameError("option for an already loaded manifest", next(iter(given[DataSpec])), [],
                               hint="data options apply to a source string or a DataSpec only")
    return data, backbone, run
