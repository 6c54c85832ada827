"""Cached steps without torch: the resolution index, and commands that answer from the cache.

The index (featcache.store.resolutions) maps a request to the feature key a full resolution
gave; a hit must give exactly that key, and anything that could change the key (weights
file, library versions, featcache's identity code, any identity option) must be a miss.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import fields, replace

import pytest
from conftest import make_image

import featcache
from featcache.extraction.entry import answer_from_cache, resolve_key
from featcache.extraction.identity import resolve_identity
from featcache.specs import BackboneSpec, DataSpec, RunSpec, specs_from_keywords
from featcache.store import resolutions
from featcache.store.digests import hash_file
from featcache.store.maintenance import verify
from featcache.store.resolutions import INDEX_FILE, Resolution, ResolutionIndex, build_request, spec_request

BASE = dict(backbone="resnet18", weights="none", layer="penultimate", pool="avg", image_size=32,
            precision="auto", dtype="float32", decode="workers", device="cpu", extra={})


def test_remember_then_lookup(tmp_path):
    index = ResolutionIndex(tmp_path)
    req = build_request(BASE)
    assert index.lookup(req) is None
    index.remember(req, Resolution("resnet18-abc", "cpu"))
    assert index.lookup(build_request(dict(BASE))) == Resolution("resnet18-abc", "cpu")
    assert index.lookup(build_request({**BASE, "image_size": 48})) is None


@pytest.mark.parametrize("option,value", [
    ("backbone", "resnet34"), ("weights", "DEFAULT"), ("layer", "layer4"), ("pool", "max"), ("image_size", 64),
    ("precision", "float16"), ("dtype", "float16"), ("decode", "draft"), ("device", "cuda"),
    ("extra", {"augment": "policy-v1"}),
])
def test_every_option_is_part_of_the_request(tmp_path, option, value):
    index = ResolutionIndex(tmp_path)
    index.remember(build_request(BASE), Resolution("k", "cpu"))
    assert index.lookup(build_request({**BASE, option: value})) is None


def test_a_changed_library_version_is_a_miss(tmp_path, monkeypatch):
    index = ResolutionIndex(tmp_path)
    index.remember(build_request(BASE), Resolution("k", "cpu"))
    real = resolutions.installed_versions
    monkeypatch.setattr(resolutions, "installed_versions", lambda: {**real(), "torch": "99.0"})
    assert index.lookup(build_request(BASE)) is None


def test_changed_identity_code_is_a_miss(tmp_path, monkeypatch):
    index = ResolutionIndex(tmp_path)
    index.remember(build_request(BASE), Resolution("k", "cpu"))
    monkeypatch.setattr(resolutions, "code_fingerprint", lambda: "edited")
    assert index.lookup(build_request(BASE)) is None


def test_a_changed_weights_file_is_a_miss(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    index = ResolutionIndex(tmp_path)
    req = build_request({**BASE, "weights": str(weights)})
    index.remember(req, Resolution("k", "cpu", str(weights), "d"))
    assert index.lookup(build_request({**BASE, "weights": str(weights)})) is not None
    weights.write_bytes(b"two!")
    assert index.lookup(build_request({**BASE, "weights": str(weights)})) is None
    assert index.lookup(req) is None  # the entry's own stat check, even for the old request


def test_a_changed_packaged_weights_file_is_a_miss(tmp_path):
    packaged = tmp_path / "packaged.bin"
    packaged.write_bytes(b"weights")
    index = ResolutionIndex(tmp_path)
    index.remember(build_request(BASE), Resolution("k", "cpu", str(packaged), "d"))
    assert index.lookup(build_request(BASE)) is not None
    st = packaged.stat()
    os.utime(packaged, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert index.lookup(build_request(BASE)) is None


def test_a_damaged_index_is_a_miss_and_is_rebuilt(tmp_path):
    (tmp_path / INDEX_FILE).write_bytes(b"this is not a database" * 100)
    index = ResolutionIndex(tmp_path)
    req = build_request(BASE)
    assert index.lookup(req) is None
    assert verify(tmp_path).problems[0].problem.startswith("damaged resolution index")
    index.remember(req, Resolution("k", "cpu"))
    assert index.lookup(req) == Resolution("k", "cpu")
    assert verify(tmp_path).ok


def test_verify_finds_a_weights_file_changed_behind_its_stat(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"abc")
    index = ResolutionIndex(tmp_path)

    index.remember(build_request(BASE), Resolution("k", "cpu", str(weights), hash_file(weights, "sha256")))
    assert verify(tmp_path).ok
    st = weights.stat()
    weights.write_bytes(b"xyz")  # same size; put the old mtime back
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    problems = verify(tmp_path).problems
    assert len(problems) == 1 and "changed behind the same size and mtime" in problems[0].problem
    assert INDEX_FILE in problems[0].fix


def test_an_unwritable_index_is_left_alone(tmp_path):
    (tmp_path / INDEX_FILE).mkdir()  # a folder where the file should be: nothing can be written
    index = ResolutionIndex(tmp_path)
    index.remember(build_request(BASE), Resolution("k", "cpu"))
    assert index.lookup(build_request(BASE)) is None


def test_concurrent_writers_share_the_index(tmp_path):
    a, b = ResolutionIndex(tmp_path), ResolutionIndex(tmp_path)
    a.remember(build_request(BASE), Resolution("k1", "cpu"))
    b.remember(build_request({**BASE, "pool": "max"}), Resolution("k2", "cpu"))
    assert a.lookup(build_request({**BASE, "pool": "max"})).key == "k2"
    with sqlite3.connect(tmp_path / INDEX_FILE) as con:
        assert con.execute("SELECT COUNT(*) FROM resolutions").fetchone()[0] == 2


# --------------------------------------------------------------------------- the index against full resolution

DEFAULTS = dict(backbone="resnet18", weights="none", image_size=32)
#: one change per option `featcache extract` accepts that enters the identity (WEIGHTS_FILE: a local file)
VARIATIONS = [{}, {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "image_size": None},
              {"backbone": "efficientnet_lite0", "weights": "IMAGENET1K"}, {"weights": "WEIGHTS_FILE"},
              {"layer": "layer4"}, {"pool": "max"}, {"pool": "none"}, {"image_size": 48}, {"image_size": None},
              {"precision": "float32"}, {"precision": "bfloat16"}, {"precision": "float16"}, {"dtype": "float16"},
              {"decode": "draft"}, {"decode": "device"}, {"device": "cpu"}, {"augment": 2}, {"augment_seed": 3}]
#: `featcache extract` options that do not enter the identity (RunSpec, DataSpec, output)
NOT_IDENTITY = {"data", "cache_dir", "as_json", "quiet", "batch_size", "workers", "on_error", "path_column",
                "label_column", "split_column", "root", "tv_split", "download", "no_labels", "flush_every",
                "flush_rows", "progress", "labelled",
                "compute"}  # inference levers change only float rounding; recorded per feature set, not keyed


def _specs(case: dict):
    device = case.get("device", "auto")
    spec = BackboneSpec(**{**DEFAULTS, **{k: v for k, v in case.items() if k != "device"}})
    return spec, RunSpec(device=device)


def _full_key(case: dict) -> str:
    """The key the full path gives (torch): resolve_identity on the device."""
    spec, run = _specs(case)
    return resolve_identity(spec, device=run.device).identity.key


def test_every_identity_option_of_the_cli_is_covered():


    covered = {k for v in VARIATIONS for k in v}
    assert {f.name for f in fields(BackboneSpec)} <= covered, "add a variation for the new identity option"
    assert {f.name for f in fields(RunSpec)} - NOT_IDENTITY <= {"device"}
    assert {f.name for f in fields(DataSpec)} - {"source"} <= NOT_IDENTITY


def test_the_index_gives_the_key_of_the_full_resolution(tmp_path):


    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not really weights")
    cases = [{k: str(weights) if v == "WEIGHTS_FILE" else v for k, v in v.items()} for v in VARIATIONS]
    full = [_full_key(c) for c in cases]
    cache = tmp_path / "cache"
    for c, key in zip(cases, full):  # a miss: resolved in full and remembered
        spec, run = _specs(c)
        assert resolve_key(spec, replace(run, cache_dir=cache)) == key
    index = ResolutionIndex(cache)
    for c, key in zip(cases, full):  # every entry answers with the full resolution's key
        spec, run = _specs(c)
        assert index.lookup(spec_request(spec, run.device)).key == key
    spec, run = _specs({"weights": str(weights)})
    weights.write_bytes(b"other weights, other key")
    assert index.lookup(spec_request(spec, run.device)) is None
    assert resolve_key(spec, replace(run, cache_dir=cache)) != full[3]


# --------------------------------------------------------------------------- commands without torch

@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A store holding a folder's features (extracted through the full path), a logreg head and a pipeline."""


    tmp = tmp_path_factory.mktemp("warm")
    data = tmp / "data"
    for i in range(12):
        make_image(data / ("a" if i % 2 else "b") / f"{i:02d}.png", seed=i, size=(24, 24))
    cache = tmp / "cache"
    r = featcache.extract(str(data), **CLI_KW, cache_dir=cache, workers=0, augment=1)
    head = tmp / "logreg.head.npz"
    featcache.fit_head(r.view, "logreg", output=head, cache_dir=cache, val_fraction=0.25, test_fraction=0.25)
    pipeline = tmp / "p.toml"
    pipeline.write_text(f'name = "p"\n[data]\nsource = "{data}"\n[split]\nval_fraction = 0.25\ntest_fraction = 0.25\n'
                        '[[backbones]]\nname = "resnet18"\nweights = "none"\nimage_size = 32\n'
                        '[[heads]]\nname = "logreg"\n[[heads]]\nname = "ncm"\n')
    return {"data": data, "cache": cache, "key": r.feature_key, "view": r.view, "head": head, "pipeline": pipeline,
            "tmp": tmp}


CLI_KW = dict(backbone="resnet18", weights="none", image_size=32)
CLI_ARGS = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32"]
#: runs CLI commands in one fresh process; prints their output, then per command the torch modules loaded after it
CHILD = """
import json, sys
from featcache.cli import cli
loaded = []
for args in json.loads(sys.argv[1]):
    cli.main(args, prog_name="featcache", standalone_mode=False)
    loaded.append([" ".join(args[:2]), sorted(m for m in ("torch", "torchvision") if m in sys.modules)])
print(json.dumps(loaded))
"""


def run_child(*commands: list[str]) -> tuple[list[str], str]:
    """(torch modules imported, with the first command that imported them; the commands' output)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([[str(a) for a in c] for c in commands])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *out, loaded = proc.stdout.strip().splitlines()
    first = next(([cmd, *mods] for cmd, mods in json.loads(loaded) if mods), [])
    return first[1:], "\n".join(out) + (f"\n(torch first imported by {first[0]!r})" if first else "")


def test_a_warm_extract_imports_no_torch(warm):
    c = ["--cache", warm["cache"]]
    modules, out = run_child(["extract", "--data", warm["data"], *CLI_ARGS, "-q", *c],
                             ["extract", "--data", warm["data"], *CLI_ARGS, "--augment", "1", "-q", *c])
    assert modules == [], f"a cache hit imported {modules}: {out}"
    assert out.startswith("cache hit:") and warm["key"] in out
    assert "augmented: 12 rows (1 per training image)" in out


def test_stage_two_with_sklearn_heads_imports_no_torch(warm):
    c = ["--cache", warm["cache"]]
    modules, out = run_child(
        ["fit-head", "--features", warm["view"], "--head", "logreg", "-o", warm["tmp"] / "a.head.npz", *c],
        ["fit-head", "--data", warm["data"], *CLI_ARGS, "--head", "knn", "-o", warm["tmp"] / "b.head.npz", *c],
        ["predict", "--head", warm["head"], "--data", warm["data"], "-o", warm["tmp"] / "pred.csv", *c],
        ["results", *c], ["cache", "ls", *c], ["cache", "info", warm["key"], *c],
        ["cache", "export", warm["view"], "-o", warm["tmp"] / "x.npz", *c], ["cache", "verify", *c])
    assert modules == [], f"stage two on cached features imported {modules}: {out[-300:]}"
    assert "12 predictions" in out


def test_a_pipeline_of_cached_rows_imports_no_torch(warm):
    modules, out = run_child(["run", warm["pipeline"], "-q", "--cache", warm["cache"]])
    assert modules == [], f"a pipeline of cached rows imported {modules}: {out[-300:]}"
    assert "best on validation (*)" in out


def test_torch_heads_import_torch_only(warm):
    modules, _ = run_child(["fit-head", "--features", warm["view"], "--head", "linear", "--max-epochs", "2",
                            "-o", warm["tmp"] / "lin.head.npz", "--cache", warm["cache"]])
    assert modules == ["torch"]


def _from_cache(warm):
    return answer_from_cache(*specs_from_keywords(str(warm["data"]), **CLI_KW, cache_dir=warm["cache"]))


def test_a_changed_library_version_takes_the_full_path(warm, monkeypatch):
    assert _from_cache(warm)[0].cache_hit
    real = resolutions.installed_versions
    monkeypatch.setattr(resolutions, "installed_versions", lambda: {**real(), "torchvision": "0.0.1"})
    assert _from_cache(warm) == (None, None)
    r = featcache.extract(str(warm["data"]), **CLI_KW, cache_dir=warm["cache"])  # the full path, remembered
    assert r.cache_hit and r.feature_key == warm["key"]
    assert _from_cache(warm)[0].feature_key == warm["key"]


def test_deleting_the_index_loses_nothing(warm):
    (warm["cache"] / INDEX_FILE).unlink()
    assert _from_cache(warm) == (None, None)
    assert featcache.extract(str(warm["data"]), **CLI_KW, cache_dir=warm["cache"]).feature_key == warm["key"]
    assert _from_cache(warm)[0].feature_key == warm["key"]


def test_results_loads_no_heavy_library(warm):
    """`featcache results` reads a JSON-lines log: no torch, HDF5, scikit-learn or scipy."""
    code = ("import sys; from featcache.cli import cli\n"
            f"cli.main(['results', '--cache', {str(warm['cache'])!r}], prog_name='featcache', standalone_mode=False)\n"
            "print(sorted(m for m in ('torch', 'h5py', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *table, loaded = proc.stdout.strip().splitlines()
    assert loaded == "[]" and len(table) >= 2
