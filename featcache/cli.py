"""The command line: parse, call one library function, print.

Library errors (FeatcacheError) and OS errors on paths the user gave (OSError) become one clean ``Error:``
line, here and only here.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable

import click
from click.core import ParameterSource

from featcache._version import __version__
from featcache.atomic import atomic_write_text
from featcache.errors import FeatcacheError, Interrupted
from featcache.quickexit import exit_process
from featcache.specs import BackboneSpec, DataSpec, RunSpec, choices

# what to do about an OSError, by errno (the message names the path and the OS's reason)
_OS_FIXES = {
    errno.ENOENT: "check the path: it (or a folder above it) does not exist",
    errno.ENOTDIR: "a part of the path is a file where a folder is expected: choose another path or move the file",
    errno.EISDIR: "the path is a folder where a file is expected: choose a file path",
    errno.EACCES: "fix the permissions or choose another path",
    errno.EPERM: "fix the permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose a path on a writable one",
    errno.ENOSPC: "free some disk space and re-run the same command",
    errno.EDQUOT: "free some disk space (quota exceeded) and re-run the same command",
    errno.EEXIST: "the path exists already: remove it or choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def os_error_message(e: OSError) -> str:
    """One line for an OSError that escaped a command: the path(s), the OS's reason, how to fix it."""
    reason = e.strerror or str(e) or type(e).__name__
    paths = " -> ".join(repr(os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else f)
                        for f in (e.filename, e.filename2) if f is not None)
    fix = _OS_FIXES.get(e.errno, "check the path, its permissions and the free disk space")
    return f"{paths + ': ' if paths else ''}{reason} ({type(e).__name__}); {fix}"


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeatcacheError as e:
            err = click.ClickException(str(e))
            if isinstance(e, Interrupted):
                err.exit_code = 130
            raise err from None
        except OSError as e:  # a path the user gave cannot be used: one line, not a traceback
            raise click.ClickException(os_error_message(e)) from None


def _check_cache_dir(ctx, param, value):
    """--cache must be (or become) a folder: an existing file on its way is a usage error. (The default is
    not checked here: `run` may take its store from the pipeline file instead.)"""
    if value is None or ctx.get_parameter_source(param.name) is ParameterSource.DEFAULT:
        return value
    p = os.path.abspath(os.path.expanduser(value))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        raise click.BadParameter(f"{value!r}: {p!r} is a file, not a folder; expected a folder for the feature "
                                 "store (created when missing): choose another path")
    return value


def cache_option(f):
    return click.option("--cache", "cache_dir", envvar="FEATCACHE_CACHE", default="cache", show_default=True,
                        type=click.Path(file_okay=False), callback=_check_cache_dir,
                        help="Feature store folder (or set FEATCACHE_CACHE).")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout.")(f)


def _emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def _table(rows: list[dict], cols: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


#: `compare --heads` default (featcache.train.compare.DEFAULT_HEADS, kept here so that --help needs no import).
COMPARE_HEADS = ("logreg", "mlp", "knn")

JOBS_HELP = ("Parallel fits in a sweep: -1 = auto (worker processes only when the sweep is long enough to pay "
             "for starting them; never with --from-disk), 1 = in this process, N = N workers.")


def _size(n: int | None) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featcache")
def cli():
    """featcache: extract frozen-backbone features once, train heads on them in seconds."""


@cli.command()
@click.option("--source", default=None, help="Only this source's backbones: torchvision, timm, ...")
@click.option("--filter", "match", default=None, help="Only names containing this text (or matching a *? glob).")
@click.option("--dims", is_flag=True,
              help="Compute every listed timm dim (by default only when at most 64 listed rows lack one).")
@cache_option
@json_option
def backbones(source, match, dims, cache_dir, as_json):
    """List every backbone that can be extracted, with its feature dim and weights."""
    from featcache.extraction.backbones import describe_all  # lazy, as below: torch, h5py or sklearn only where used

    rows = describe_all(cache_dir, source=source, match=match, dims=dims)
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        r["weights_list"] = (",".join(w + ("*" if w == r["default_weights"] else "") for w in r["weights"]) or "-") + (
            " (in cache)" if r.get("cached") else "")
        r["dim"] = "?" if r["dim"] is None else r["dim"]
    click.echo(_table(rows, ["name", "dim", "source", "weights_list"]).replace("WEIGHTS_LIST", "WEIGHTS (*=DEFAULT)"))
    if any(r["dim"] == "?" for r in rows):
        click.echo("dim ?: not computed yet; narrow the list (--filter) or pass --dims", err=True)


def _spec_options(cls, opts: list, arg: str, build: Callable[[dict], object]):
    """A decorator declaring ``opts`` once; the command receives ``arg=build(values)`` (a ``cls`` spec)
    instead of the option values (named after the spec's fields)."""
    names = {o.name for o in _declared(opts)}

    def decorate(f):
        @functools.wraps(f)
        def command(*args, **kw):
            kw[arg] = build({n: kw.pop(n) for n in names})
            return f(*args, **kw)

        for o in reversed(opts):
            command = o(command)
        return command

    return decorate


def _declared(opts: list) -> list[click.Parameter]:
    """The click parameters a list of option decorators declares."""

    def probe():
        pass

    for o in opts:
        o(probe)
    return probe.__click_params__


def data_options(required: bool, labels: bool = True):
    """DataSpec options (extract, fit-head, predict); ``labels=False`` leaves out the label options."""
    opts = [
        click.option("--data", "source", required=required,
                     help="Image folder, CSV file, builtin:digits | builtin:clipart, or torchvision:NAME."),
        click.option("--path-column", default="path", show_default=True, help="CSV: column of image paths."),
        *([click.option("--label-column", default="label", show_default=True,
                        help="CSV: column of labels ('' for none).")] if labels else []),
        click.option("--split-column", default=None, help="CSV: optional column of train/val/test."),
        click.option("--root", default=None,
                     help="CSV: folder the paths are relative to [default: the CSV's folder]; "
                          "torchvision:NAME: the dataset root [default: $TORCHVISION_DATA or ./data]."),
        click.option("--split", "tv_split", type=click.Choice(choices(DataSpec, "tv_split")), default="all",
                     show_default=True, help="torchvision: which official split to read."),
        click.option("--download", is_flag=True, help="torchvision: download the dataset if it is missing."),
        *([click.option("--no-labels", "labelled", is_flag=True, flag_value=False, default=True,
                        help="Folder: treat sub-folders as plain folders, not classes.")] if labels else []),
    ]

    def build(values: dict) -> DataSpec | None:
        if values["source"] is None:
            return None
        if labels:
            values["label_column"] = values["label_column"] or None
        else:
            values.update(label_column=None, labelled=False)
        return DataSpec(**values)

    return _spec_options(DataSpec, opts, "data", build)


backbone_options = _spec_options(BackboneSpec, [
    click.option("--backbone", default="efficientnet_lite0", show_default=True, help="See `featcache backbones`."),
    click.option("--weights", default="DEFAULT", show_default=True,
                 help="DEFAULT, a weights name (e.g. IMAGENET1K_V2), none (random init), or a state-dict file."),
    click.option("--layer", default="penultimate", show_default=True,
                 help="penultimate (input of the final classifier) or a module name, e.g. features."),
    click.option("--pool", type=click.Choice(choices(BackboneSpec, "pool")), default="avg", show_default=True,
                 help="Pooling of spatial layers; none keeps the flattened map."),
    click.option("--image-size", type=click.IntRange(min=1), default=None,
                 help="Resize and centre-crop to this size (part of the key)."),
    click.option("--precision", type=click.Choice(choices(BackboneSpec, "precision")), default="auto",
                 show_default=True, help="Compute precision; auto = bfloat16 AMP on CUDA, float32 on CPU."),
    click.option("--dtype", type=click.Choice(choices(BackboneSpec, "dtype")), default="float32", show_default=True,
                 help="Storage dtype of the features."),
    click.option("--decode", type=click.Choice(choices(BackboneSpec, "decode")), default="workers",
                 show_default=True,
                 help="How JPEG files are decoded: workers = PIL in the DataLoader workers; draft = PIL at a "
                      "reduced DCT scale no smaller than the resize target (large photos, small inputs); "
                      "device = torchvision.io on the extraction device (nvJPEG on CUDA). Part of the "
                      "feature key."),
    click.option("--augment", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Also cache N seeded augmented copies of every training image."),
    click.option("--augment-seed", type=int, default=0, show_default=True,
                 help="Seed of the augmented copies (part of their feature key)."),
], "backbone", lambda values: BackboneSpec(**values))


run_options = _spec_options(RunSpec, [
    click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                 help="Images per forward pass."),
    click.option("--workers", type=click.IntRange(min=0), default=None,
                 help="DataLoader decode workers; 0 decodes in the main process "
                 "[default: cores - 1, at most 8; every core on 1-2 cores]."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
    click.option("--on-error", type=click.Choice(choices(RunSpec, "on_error")), default="fail", show_default=True,
                 help="What to do with an image that cannot be decoded."),
    click.option("--flush-every", type=click.FloatRange(min=0), default=60.0, show_default=True,
                 help="Seconds between row flushes: a killed run recomputes at most this much work."),
    click.option("--flush-rows", type=click.IntRange(min=1), default=8192, show_default=True,
                 help="Rows between row flushes (whichever of the two comes first)."),
    click.option("--compute", type=click.Choice(choices(RunSpec, "compute")), default="auto", show_default=True,
                 help="auto = CPU inference levers (channels_last; when the run is large enough, a frozen "
                      "oneDNN graph or the model run by ONNX Runtime), chosen by rule and recorded with the "
                      "feature set, and the forward's freed memory kept for the next batch; plain = the plain "
                      "eager forward. "
                      "Not part of the feature key (they change float rounding only)."),
    cache_option,
    click.option("--quiet", "-q", "progress", is_flag=True, flag_value=False, default=True,
                 help="No progress bar."),
], "run", lambda values: RunSpec(**values))


def _with_progress(run: RunSpec, hidden: bool) -> RunSpec:
    """Progress bars only on a terminal, and not when ``hidden`` (--json, or the output is on stdout)."""
    return replace(run, progress=run.progress and not hidden and sys.stderr.isatty())


@cli.command()
@data_options(required=True)
@backbone_options
@run_options
@json_option
def extract(data, backbone, run, as_json):
    """Stage one: extract features of DATA into the store (a second run is a cache hit)."""
    from featcache.extraction.entry import extract as extract_features  # (h5py; torch on a cache miss)

    result = extract_features(data, backbone, _with_progress(run, as_json))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports for all
    if as_json:
        _emit_json(result.to_dict())
        return
    click.echo(result.summary())
    _echo_skipped(result.skipped)


def _echo_skipped(skipped: list[dict]) -> None:
    """The files ``--on-error skip`` left out, on stderr: the first ten, then how many more."""
    for s in skipped[:10]:
        click.echo(f"  skipped {s['id']}: {s['error']}", err=True)
    if len(skipped) > 10:
        click.echo(f"  ... and {len(skipped) - 10} more (listed in the view's 'skipped' attribute)", err=True)


#: fit-head options that set one head parameter (the others are set with ``--param NAME=VALUES``)
PARAM_OPTIONS = {"C": "--C", "weight_decay": "--weight-decay", "lr": "--lr", "hidden_sizes": "--hidden-sizes",
                 "dropout": "--dropout", "n_neighbors": "--n-neighbors", "max_epochs": "--max-epochs"}


def _param_label(name: str) -> str:
    """How the user set head parameter ``name`` on the command line (for the library's messages)."""
    flag = PARAM_OPTIONS.get(name)
    return f"{flag} (or --param {name}=...)" if flag else f"--param {name}=..."


def _param_values(values: dict, extra_params: tuple[str, ...]) -> dict:
    """The head-parameter options and the ``--param NAME=VALUES`` items -> {name: text}."""
    values = dict(values)
    for item in extra_params:
        name, sep, v = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE or NAME=V1,V2,...", param_hint="'--param'")
        values[name.strip()] = v
    return values


@cli.command("fit-head")
@click.option("--head", default="logreg", show_default=True, help="See `featcache heads`.")
@click.option("--features", "features_ref", default=None,
              help="A view: file path, feature KEY (or prefix) with one view, or KEY:DATA.")
@data_options(required=False)
@backbone_options
@click.option("--C", "C", default=None, help="logreg/svm: inverse regularisation; a comma list sweeps.")
@click.option("--weight-decay", default=None, help="linear/mlp: AdamW weight decay; a comma list sweeps.")
@click.option("--lr", default=None, help="linear/mlp: learning rate; a comma list sweeps.")
@click.option("--hidden-sizes", default=None, help="mlp: layer sizes as 512 or 512:256; a comma list sweeps.")
@click.option("--dropout", default=None, help="mlp: dropout; a comma list sweeps.")
@click.option("--n-neighbors", default=None, help="knn: neighbours; a comma list sweeps.")
@click.option("--max-epochs", default=None, help="linear/mlp: epochs planned, 'auto' by the data's size (the cosine lr schedule spans them).")
@click.option("--param", "extra_params", multiple=True, metavar="NAME=VALUES",
              help="Any head parameter, e.g. --param temperature=0.05,0.1 (repeatable).")
@click.option("--sweep", "use_default_grid", is_flag=True, help="Sweep the head's default grid on the val split.")
@click.option("--val-fraction", type=float, default=0.15, show_default=True,
              help="Share of the labelled rows held out for validation when the data has no val split.")
@click.option("--test-fraction", type=float, default=0.15, show_default=True,
              help="Share of the labelled rows held out for testing when the data has no test split.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Where to save the head [default: CACHE/heads/KEY/HEAD-TIME.head.npz].")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write the test confusion matrix PNG.")
@click.option("--from-disk", is_flag=True, help="Read features from the HDF5 view in batches (larger than memory).")
@click.option("--jobs", "n_jobs", type=int, default=-1, show_default=True, help=JOBS_HELP)
@run_options
@json_option
def fit_head(head, features_ref, data, backbone, extra_params, run, as_json, **options):
    """Stage two: fit a head on cached features (--features), or on --data extracted on the way."""
    from featcache.train.params import params_and_grid  # (sklearn, for the heads' defaults)
    from featcache.train.session import train_head  # (sklearn; torch for torch heads or a cache miss)

    params, grid = params_and_grid(_param_values({k: options.pop(k) for k in PARAM_OPTIONS}, extra_params),
                                   _param_label)
    result = train_head(head, features=features_ref, data=data, backbone=backbone, run=_with_progress(run, as_json),
                        params=params, grid=grid, **options)
    if as_json:
        _emit_json(result.to_dict())
    else:
        click.echo(result.summary())


@cli.command("compare")
@click.option("--heads", default=",".join(COMPARE_HEADS), show_default=True,
              help="Comma list of heads to compare (see `featcache heads`).")
@click.option("--features", "features_ref", default=None,
              help="A view: file path, feature KEY (or prefix) with one view, or KEY:DATA.")
@data_options(required=False)
@backbone_options
@click.option("--cv", type=int, default=5, show_default=True, help="Folds of the repeated stratified k-fold.")
@click.option("--repeats", type=int, default=2, show_default=True, help="Repeats of the k-fold (new shuffles).")
@click.option("--val-fraction", type=float, default=0.15, show_default=True,
              help="Share held out inside each training fold (and of the final train/val split) to choose "
                   "hyper-parameters on.")
@click.option("--test-fraction", type=float, default=0.15, show_default=True,
              help="Share of the labelled rows held out for the final test when the data has no test split.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and the folds.")
@click.option("--no-sweep", is_flag=True, help="Fit each head with its defaults instead of choosing from its grid.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False),
              help="Write accuracy with 95 % error bars against fit time (PNG).")
@click.option("--jobs", "n_jobs", type=int, default=-1, show_default=True,
              help="Parallel fits: -1 = auto (worker processes when the first fits show it pays), 1 = here, N.")
@run_options
@json_option
def compare_cmd(heads, features_ref, data, backbone, no_sweep, run, as_json, **options):
    """Compare heads on one view: repeated CV with intervals, paired tests, one test score each."""
    from featcache.train.compare import compare_heads

    result = compare_heads(heads, features=features_ref, data=data, backbone=backbone,
                           run=_with_progress(run, as_json), sweep=not no_sweep, **options)
    if as_json:
        _emit_json(result.to_dict())
    else:
        click.echo(result.summary())


@cli.command()
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False),
              help="A head file saved by fit-head.")
@data_options(required=True, labels=False)
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False), help="CSV file [default: stdout].")
@run_options
@json_option
def predict(head_path, data, output, run, as_json):
    """Label new images with a saved head (their features are reused or extracted)."""
    from featcache.train.prediction import predict as predict_labels  # (sklearn; torch on a cache miss)

    pred = predict_labels(head_path, data, _with_progress(run, as_json or not output))
    if output:
        atomic_write_text(Path(output), pred.to_csv())
    if as_json:
        _emit_json(pred.to_dict())
        return
    skipped = pred.extraction.get("skipped", [])
    if output:
        click.echo(f"{len(pred.rows)} predictions -> {output}" + (f"; skipped {len(skipped)}" if skipped else ""))
    else:
        click.echo(pred.to_csv(), nl=False)
    _echo_skipped(skipped)


@cli.command()
@click.option("--key", "feature_key", default=None,
              help="Only results on this feature key (or prefix); KEY:DATA also filters on the data.")
@click.option("--data", default=None, help="Only results on this data set (the DATA column).")
@click.option("--sort-by", default="test.accuracy", show_default=True,
              help="A column or metric path, e.g. val.macro_f1 or timings.fit_s.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show the best N.")
@cache_option
@json_option
def results(feature_key, data, sort_by, limit, cache_dir, as_json):
    """Show the results log as a table, best first; scores with their 95 % intervals."""
    from featcache.train.catalog import format_table_row, result_rows  # (numpy, for the intervals)

    found = result_rows(cache_dir, feature_key=feature_key, data=data, sort_by=sort_by, limit=limit)
    if as_json:
        _emit_json(found.rows)
        return
    if not found.rows:
        click.echo(found.empty_message)
        return
    fmt = [format_table_row(r) for r in found.rows]
    click.echo(_table(fmt, list(fmt[0].keys())))
    if found.malformed:
        click.echo(f"({found.malformed} malformed lines skipped)", err=True)


@cli.command()
@json_option
def heads(as_json):
    """List the heads fit-head can train, with their default sweep grids."""
    from featcache.train.catalog import describe_heads  # (scikit-learn, for the heads)

    rows = [{**r, "grid": json.dumps(r["grid"])} for r in describe_heads()]
    if as_json:
        _emit_json(rows)
    else:
        click.echo(_table(rows, ["name", "grid", "about"]))


@cli.group()
def cache():
    """Look after the feature store: ls, info, verify, gc, export."""


@cache.command("ls")
@cache_option
@json_option
def cache_ls(cache_dir, as_json):
    """List the feature sets in the store."""
    from featcache.store.featureset import FeatureStore  # (h5py)

    rows = FeatureStore(cache_dir).info()
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        click.echo(f"no features in {cache_dir}; run `featcache extract` first")
        return
    for r in rows:
        r["size"], r["views_n"] = _size(r["bytes"]), len(r["views"])
    click.echo(_table(rows, ["key", "backbone", "layer", "dim", "image_size", "dtype", "rows", "views_n", "size",
                             "created"]).replace("VIEWS_N", "VIEWS"))


@cache.command("info")
@click.argument("ref")
@cache_option
@json_option
def cache_info(ref, cache_dir, as_json):
    """Show one feature set (KEY or prefix) or one view file (PATH)."""
    from featcache.store.views import describe  # (h5py)

    doc = describe(ref, cache_dir)
    if as_json:
        _emit_json(doc)
        return
    for k, v in doc.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v)
        click.echo(f"{k:>12}: {v}")


@cache.command("verify")
@click.option("--fast", is_flag=True, help="Skip reading every value (NaN/inf and view-vs-rows checks).")
@cache_option
@json_option
def cache_verify(fast, cache_dir, as_json):
    """Check every file of the store; exit 1 when a problem is found."""
    from featcache.store.maintenance import verify  # (h5py)

    rep = verify(cache_dir, check_values=not fast)
    if as_json:
        _emit_json(rep.to_dict())
    else:
        for p in rep.problems:
            click.echo(f"PROBLEM {p.path}: {p.problem}\n        fix: {p.fix}")
        if rep.temporary_files:
            click.echo(f"{len(rep.temporary_files)} temporary files (`featcache cache gc` removes those of "
                       "finished writers)")
        if rep.duplicate_rows:
            click.echo(f"{rep.duplicate_rows} rows stored twice by concurrent runs (harmless; `featcache cache gc` "
                       "merges them)")
        click.echo(f"{'ok' if rep.ok else f'{len(rep.problems)} problems'}: {rep.checked_files} files, "
                   f"{rep.rows} rows checked")
    if not rep.ok:
        sys.exit(1)


@cache.command("gc")
@click.option("--prune-rows", is_flag=True, help="Also drop rows that no view references.")
@click.option("--repair", is_flag=True, help="Move damaged files aside (their rows are re-extracted next time).")
@cache_option
@json_option
def cache_gc(prune_rows, repair, cache_dir, as_json):
    """Remove temporary files of dead writers, merge shards, optionally prune or repair."""
    from featcache.store.maintenance import gc  # (h5py)

    rep = gc(cache_dir, prune_rows=prune_rows, repair=repair)
    if as_json:
        _emit_json(rep.to_dict())
        return
    click.echo(f"removed {len(rep.removed_temporary)} temporary files ({_size(rep.freed_bytes)}), merged "
               f"{rep.merged_shards} shards, pruned {rep.pruned_rows} rows, moved aside {len(rep.quarantined)} "
               "damaged files" + (f", removed {len(rep.removed_damaged)} damaged kept files (made again when "
                                  "needed)" if rep.removed_damaged else ""))
    if rep.busy:
        click.echo(f"left {len(rep.busy)} feature set(s) alone while an extraction adds rows to them "
                   f"({', '.join(rep.busy)}): run `featcache cache gc` again when it has finished")


@cli.command("run")
@click.argument("pipeline_path", metavar="PIPELINE.toml", type=click.Path(dir_okay=False))
@click.option("--jobs", "n_jobs", type=int, default=-1, show_default=True, help=JOBS_HELP)
@cache_option
@json_option
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def run_cmd(pipeline_path, n_jobs, cache_dir, as_json, quiet):
    """Run a pipeline file: extract every backbone (reusing cached rows), fit every head, summarise."""
    from featcache.pipeline.runner import load_pipeline, run_pipeline  # (sklearn; torch on a cache miss)

    # --cache or FEATCACHE_CACHE beat the file's `cache`; the file's beats the default
    given = click.get_current_context().get_parameter_source("cache_dir") is not ParameterSource.DEFAULT
    store = cache_dir if given else None
    result = run_pipeline(load_pipeline(pipeline_path, cache_dir=store), cache_dir=store,
                          progress=not (as_json or quiet), n_jobs=n_jobs)
    if as_json:
        _emit_json(result.to_dict())
    else:
        click.echo(result.summary())


@cache.command("export")
@click.argument("ref", metavar="KEY[:DATA]|PATH")
@click.option("--format", "fmt", type=click.Choice(["npz", "parquet", "csv"]), default=None,
              help="Output format [default: the suffix of -o, else npz]; parquet needs pyarrow.")
@click.option("--output", "-o", default=None, type=click.Path(),
              help="Output file or folder [default: ./KEY-DATA.FORMAT].")
@cache_option
@json_option
def cache_export(ref, fmt, output, cache_dir, as_json):
    """Write one view (features, labels, ids, split, class names) as npz, csv or parquet."""
    from featcache.store.export import export_view  # (h5py)

    result = export_view(ref, fmt, output, cache_dir)
    if as_json:
        _emit_json(result.to_dict())
    else:
        click.echo(result.summary())


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as the CLI prints it: its message, without the source line Python adds."""
    return f"warning ({category.__name__}): {message}\n"


def main():
    warnings.formatwarning = _warning_line
    try:
        cli(prog_name="featcache")  # click's standalone mode ends with SystemExit
    except SystemExit as e:
        exit_process(e.code)  # without the interpreter's seconds of teardown once torch is loaded


if __name__ == "__main__":
    main()
