"""Stage two end to end on builtin:digits through the CLI: extract, fit every head, predict, results."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from click.testing import CliRunner

from featcache.cli import cli
from featcache.train.heads import list_heads

EXTRACT = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32", "--workers", "0"]
FAST = {"mlp": ["--max-epochs", "15", "--hidden-sizes", "128"], "linear": ["--max-epochs", "15"]}


def invoke(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return r


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cache = tmp_path_factory.mktemp("s2") / "cache"
    r = invoke("extract", "--data", "builtin:digits", *EXTRACT, "--cache", cache, "--json")
    assert r.exit_code == 0, r.output
    return cache, json.loads(r.stdout)


@pytest.mark.parametrize("head", list_heads())
def test_fit_every_head_then_predict(digits, head, tmp_path):
    cache, ext = digits
    r = invoke("fit-head", "--features", ext["view"], "--head", head, *FAST.get(head, []),
               "--cache", cache, "--json")
    assert r.exit_code == 0, r.output
    fit = json.loads(r.stdout)
    assert fit["feature_key"] == ext["feature_key"] and fit["head"] == head
    assert fit["metrics"]["test"]["accuracy"] > 0.6  # random resnet18 features separate digits well
    assert {"accuracy", "balanced_accuracy", "macro_f1", "top5", "confusion_matrix"} <= set(fit["metrics"]["test"])
    assert fit["timings"]["fit_s"] > 0
    new = tmp_path / "new"
    src = cache / "builtin" / "digits"
    (new / "x").mkdir(parents=True)
    for name in ("0/0000.png", "7/0007.png"):
        shutil.copy(src / name, new / "x" / name.replace("/", "_"))
    p = invoke("predict", "--head", fit["head_path"], "--data", new, "--cache", cache)
    assert p.exit_code == 0, p.output
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [r["path"] for r in rows] == ["x/0_0000.png", "x/7_0007.png"]
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)
    assert [r["label"] for r in rows] == ["0", "7"] or head in ("ncm", "knn", "linear", "mlp")


def test_predict_names_the_files_it_skipped(digits, tmp_path):
    cache, ext = digits
    fit = json.loads(invoke("fit-head", "--features", ext["view"], "--head", "ncm", "--cache", cache, "--json").stdout)
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(cache / "builtin" / "digits" / "3" / "0003.png", new / "a.png")
    (new / "bad.png").write_text("not an image")
    out = tmp_path / "pred.csv"
    p = invoke("predict", "--head", fit["head_path"], "--data", new, "--on-error", "skip", "-o", out, "--cache", cache)
    assert p.exit_code == 0, p.output
    assert f"1 predictions -> {out}; skipped 1" in p.stdout
    assert "skipped bad.png: UnidentifiedImageError" in p.stderr
    assert [r["path"] for r in csv.DictReader(out.open())] == ["a.png"]
    p = invoke("predict", "--head", fit["head_path"], "--data", new, "--on-error", "skip", "--cache", cache)
    assert p.exit_code == 0 and "skipped bad.png" in p.stderr and "bad.png" not in p.stdout  # the CSV stays clean


def test_results_table_best_first_and_filtered(digits):
    cache, ext = digits
    invoke("fit-head", "--features", ext["view"], "--head", "logreg", "--C", "0.01,1", "--cache", cache)
    r = invoke("results", "--key", ext["feature_key"][:10], "--cache", cache, "--json")
    rows = json.loads(r.stdout)
    accs = [x["test_acc"] for x in rows]
    assert accs == sorted(accs, reverse=True) and len(rows) >= 1
    table = invoke("results", "--cache", cache)
    assert "TEST_ACC" in table.output and "logreg" in table.output
    assert ext["feature_key"] in table.output  # the whole key, as --features and --key take it
    assert {x["feature_key"] for x in rows} == {ext["feature_key"]}


def test_sweep_chooses_on_validation_and_says_so(digits):
    cache, ext = digits
    r = invoke("fit-head", "--features", ext["view"], "--head", "logreg", "--C", "0.0001,1",
               "--cache", cache, "--json")
    fit = json.loads(r.stdout)
    assert fit["params"]["C"] == 1 and len(fit["sweep"]) == 2


def test_unknown_feature_key_names_the_store_and_what_to_do(digits, tmp_path):
    cache, _ = digits
    r = invoke("fit-head", "--head", "ncm", "--features", "nosuchkey", "--cache", cache)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "unknown feature key 'nosuchkey'" in r.output and "expected one of: resnet18-" in r.output
    assert f"featcache cache ls --cache {cache}" in r.output
    empty = tmp_path / "empty"
    r = invoke("fit-head", "--head", "ncm", "--features", "nosuchkey", "--cache", empty)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "there are none" in r.output and f"the store {empty} holds no feature sets yet" in r.output
    assert "expected one of" not in r.output


def test_unlabelled_view_and_single_class_are_refused(tmp_path):
    from conftest import unlabelled_and_single_class

    cache = tmp_path / "c"
    unlabelled_and_single_class(tmp_path)
    for data, msg in (("u", "no labels"), ("one", "single class")):
        r = invoke("fit-head", "--data", tmp_path / data, *EXTRACT, "--head", "logreg", "--cache", cache)
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output


def test_head_of_another_identity_and_corrupted_head_are_refused(digits, tmp_path):
    cache, ext = digits
    fit = json.loads(invoke("fit-head", "--features", ext["view"], "--head", "ncm", "--cache", cache,
                            "--json").stdout)
    from featcache.train.persist import check_feature_key, load_head

    with pytest.raises(Exception, match=ext["feature_key"]):
        check_feature_key(load_head(fit["head_path"]), "resnet18-000000000000")
    bad = tmp_path / "bad.head.npz"
    bad.write_bytes(open(fit["head_path"], "rb").read()[:100])
    r = invoke("predict", "--head", bad, "--data", cache / "builtin" / "digits" / "3", "--cache", cache)
    assert r.exit_code == 1 and r.output.startswith("Error:") and "bad.head.npz" in r.output
    r = invoke("fit-head", "--features", ext["view"], "--head", "logregg", "--cache", cache)
    assert r.exit_code == 1 and "did you mean 'logreg'" in r.output


# --------------------------------------------------------------------------- gaps of the stage-two audit


@pytest.mark.parametrize("args, names", [
    (["--head", "mlp", "--hidden-sizes", "512:abc"], ["--hidden-sizes", "'512:abc'", "'abc'", "512:256"]),
    (["--head", "logreg", "--param", "C="], ["C=", "is empty", "expected a value"]),
    (["--head", "ncm", "--param", "temperature=0.1,,0.2"], ["temperature", "'0.1,,0.2'", "empty item"]),
])
def test_bad_fit_options_are_one_clear_error(digits, args, names):
    cache, ext = digits
    r = invoke("fit-head", "--features", ext["view"], *args, "--cache", cache)
    assert r.exit_code == 1 and r.output.startswith("Error:"), r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    for name in names:
        assert name in r.output, (name, r.output)


@pytest.mark.parametrize("option, value, kwargs, names", [
    ("--seed", "-5", {"seed": -5}, ["seed=-5", "expected a whole number from 0", "--seed 0"]),
    ("--jobs", "0", {"n_jobs": 0}, ["n_jobs=0", "expected a non-zero integer"]),
])
def test_bad_seed_and_jobs_are_one_clear_error(digits, option, value, kwargs, names, monkeypatch):
    # before: --seed -5 raised sklearn's InvalidParameterError; --jobs 0 without a sweep was ignored
    from featcache.train import fitting as train
    from featcache.errors import FeatcacheError

    cache, ext = digits
    monkeypatch.setattr(train, "load_features", lambda *a, **k: pytest.fail("read the features first"))
    with pytest.raises(FeatcacheError) as ei:
        train.fit_head(ext["view"], "logreg", cache_dir=cache, **kwargs)
    for name in names:
        assert name in str(ei.value), (name, str(ei.value))
    r = invoke("fit-head", "--features", ext["view"], "--head", "logreg", option, value, "--cache", cache)
    last = r.output.strip().splitlines()[-1]  # the library's error (exit 1) or a usage error of the CLI (exit 2)
    assert r.exit_code in (1, 2) and last.startswith("Error:") and value in last, r.output
    assert "Traceback" not in r.output and "InvalidParameterError" not in r.output


@pytest.mark.parametrize("args, names", [
    (["--head", "knn", "--param", "n_neighbors=abc"], ["KNNHead", "n_neighbors='abc'", "a positive int"]),
    (["--head", "svm", "--C", "0.1,-1"], ["SVMHead", "C=-1", "a positive number"]),
    (["--head", "mlp", "--param", "dropout=0.2,1.5"], ["MLPHead", "dropout=1.5", "in [0, 1)"]),
    (["--head", "logreg", "--param", "device=tpu"], ["device='tpu'", "'cuda:N'"]),
])
def test_bad_head_values_fail_before_anything_is_extracted(tmp_path, args, names):
    # before: only the parameter names were checked early; a bad value failed in fit, after extraction
    cache = tmp_path / "cache"
    r = invoke("fit-head", "--data", "builtin:digits", *EXTRACT, *args, "--cache", cache)
    assert r.exit_code == 1 and r.output.startswith("Error:") and "Traceback" not in r.output, r.output
    for name in names:
        assert name in r.output, (name, r.output)
    assert not (cache / "features").exists(), "extracted before the head's parameters were checked"


def test_a_plot_path_without_an_image_format_fails_before_any_work(digits, tmp_path):
    # before: the head was fitted, saved and logged, and only then did the plot fail (exit 1)
    cache, ext = digits
    heads = cache / "heads"
    before = sorted(heads.rglob("*.head.npz")) if heads.exists() else []
    r = invoke("fit-head", "--features", ext["view"], "--head", "ncm", "--plot", tmp_path / "cm.txt", "--cache", cache)
    assert r.exit_code == 1 and "cannot tell the image format" in r.output and "'.txt'" in r.output, r.output
    assert (sorted(heads.rglob("*.head.npz")) if heads.exists() else []) == before  # no head saved
    fresh = tmp_path / "fresh"
    for cmd in (["fit-head", "--head", "ncm"], ["compare", "--heads", "ncm,knn"]):
        r = invoke(*cmd, "--data", "builtin:digits", *EXTRACT, "--plot", tmp_path / "p.txt", "--cache", fresh)
        assert r.exit_code == 1 and "cannot tell the image format" in r.output, r.output
        assert not (fresh / "features").exists(), f"{cmd[0]} extracted before checking --plot"


def test_parse_grid_values():
    from featcache.train.params import parse_grid

    assert parse_grid({"hidden_sizes": "512,512:256", "C": None, "dropout": "0,0.2", "device": "cuda:1",
                       "center": "true"}) == {
        "hidden_sizes": [(512,), (512, 256)], "dropout": [0, 0.2], "device": ["cuda:1"], "center": [True]}


def test_default_fit_records_the_effective_parameters(digits):
    # before: a fit without options recorded "params": {} (blank PARAMS column)
    cache, ext = digits
    fit = json.loads(invoke("fit-head", "--features", ext["view"], "--head", "logreg", "--cache", cache,
                            "--json").stdout)
    assert fit["params"] == {"C": 1.0} and fit["params_given"] == {} and fit["data"] == "digits"
    again = json.loads(invoke("fit-head", "--features", ext["view"], "--head", "logreg", "--C", "0.5",
                              "--cache", cache, "--json").stdout)
    assert again["head_path"] != fit["head_path"]  # same head, same process, same second: a new file
    assert again["params"] == again["params_given"] == {"C": 0.5}
    mlp = json.loads(invoke("fit-head", "--features", ext["view"], "--head", "mlp", *FAST["mlp"], "--cache", cache,
                            "--json").stdout)
    assert mlp["params"] == {"hidden_sizes": [128], "dropout": 0.2, "max_epochs": 15}
    assert mlp["params_given"] == {"hidden_sizes": [128], "max_epochs": 15}
    records = [json.loads(line) for line in (cache / "results.jsonl").read_text().splitlines()]
    rec = next(r for r in records if r["head_path"] == fit["head_path"])
    assert rec["params"] == {"C": 1.0} and rec["params_given"] == {} and rec["grid"] == {}
    assert rec["data"] == "digits"
    rec = next(r for r in records if r["head_path"] == mlp["head_path"])
    assert rec["params"]["hidden_sizes"] == [128]
    from featcache.train.persist import load_head

    assert load_head(fit["head_path"]).metadata["params"] == {"C": 1.0}
    table = invoke("results", "--cache", cache).output
    assert "DATA" in table and "C=1.0" in table and "hidden_sizes=128, dropout=0.2, max_epochs=15" in table


def test_sweep_records_the_grid_and_the_choice(digits):
    cache, ext = digits
    fit = json.loads(invoke("fit-head", "--features", ext["view"], "--head", "knn", "--n-neighbors", "1,5",
                            "--cache", cache, "--json").stdout)
    assert set(fit["params"]) == {"n_neighbors", "weights"} and fit["params"]["weights"] == "distance"
    assert fit["params"]["n_neighbors"] in (1, 5) and fit["params_given"] == {}
    rec = [json.loads(line) for line in (cache / "results.jsonl").read_text().splitlines()][-1]
    assert rec["grid"] == {"n_neighbors": [1, 5]} and rec["params"] == fit["params"]


def _forge(head_path, out, **identity_changes):
    """A copy of a head file whose recorded identity is edited (its feature key is not)."""
    from featcache.train.persist import load_head, save_head

    loaded = load_head(head_path)
    meta = dict(loaded.metadata)
    meta["identity"] = {**meta["identity"], **identity_changes}
    return save_head(loaded.head, out, name=loaded.name, feature_key=loaded.feature_key,
                     class_names=loaded.class_names, metadata=meta)


def test_predict_refuses_a_head_of_another_identity_before_extracting(digits, tmp_path, monkeypatch):
    # before: the key was compared after a full extraction that also cached unwanted rows
    import featcache.train.prediction as predict_module
    from featcache.errors import HeadError

    cache, ext = digits
    fit = json.loads(invoke("fit-head", "--features", ext["view"], "--head", "ncm", "--cache", cache,
                            "--json").stdout)
    forged = _forge(fit["head_path"], tmp_path / "forged.head.npz", layer="layer3")
    new = tmp_path / "new"
    (new / "x").mkdir(parents=True)
    shutil.copy(cache / "builtin" / "digits" / "3" / "0003.png", new / "x" / "a.png")

    def no_extract(*a, **k):
        raise AssertionError("predict extracted features for a head it must refuse")

    monkeypatch.setattr(predict_module, "extract", no_extract)
    with pytest.raises(HeadError) as ei:
        predict_module.predict(forged, str(new), cache_dir=cache, workers=0)
    msg = str(ei.value)
    assert str(forged) in msg and ext["feature_key"] in msg and "nothing was extracted" in msg
    # options given to predict() that change the features are refused before extracting as well
    with pytest.raises(HeadError, match=ext["feature_key"]):
        predict_module.predict(fit["head_path"], str(new), cache_dir=cache, workers=0, image_size=48)
    r = invoke("predict", "--head", forged, "--data", new, "--cache", cache)
    assert r.exit_code == 1 and r.output.startswith("Error:") and "Traceback" not in r.output
    sets = [p.name for p in (cache / "features").iterdir()]
    assert sets == [ext["feature_key"]]  # no feature set of another identity was started


def test_python_api_is_exported_and_works(digits, tmp_path):
    import featcache

    cache, ext = digits
    from featcache import _LAZY

    assert set(_LAZY) <= set(featcache.__all__)
    for name in ("fit_head", "FitResult", "predict", "Prediction", "save_head", "load_head", "make_head",
                 "list_heads", "default_grid", "read_results", "results_table"):
        assert name in featcache.__all__ and getattr(featcache, name) is not None, name
    assert "ncm" in featcache.list_heads() and featcache.default_grid("logreg") == {"C": [0.01, 0.1, 1.0, 10.0]}
    f = featcache.load_features(ext["view"])
    small = featcache.Features(features=f.features[:300], labels=f.labels[:300], ids=f.ids[:300],
                               split=f.split[:300], class_names=f.class_names, feature_key=f.feature_key,
                               identity=f.identity, path=f.path, attrs=f.attrs)
    fit = featcache.fit_head(small, "ncm", cache_dir=cache, output=tmp_path / "ncm.head.npz")
    assert isinstance(fit, featcache.FitResult) and fit.params == {"center": True, "temperature": 0.1}
    loaded = featcache.load_head(fit.head_path)
    again = featcache.save_head(loaded.head, tmp_path / "copy", name=loaded.name, feature_key=loaded.feature_key,
                                class_names=loaded.class_names, metadata=loaded.metadata)
    assert featcache.make_head("ncm").get_params() == loaded.head.get_params()
    pred = featcache.predict(again, str(cache / "builtin" / "digits" / "7"), cache_dir=cache, workers=0)
    assert isinstance(pred, featcache.Prediction) and len(pred.rows) > 100
    from featcache import predict

    assert predict(again, str(cache / "builtin" / "digits" / "7"), cache_dir=cache).rows == pred.rows
    rows = featcache.results_table(featcache.read_results(cache / "results.jsonl", feature_key=fit.feature_key))
    assert rows and rows[0]["data"] == "digits"


def test_import_featcache_stays_light():
    import subprocess
    import sys

    code = ("import sys, featcache; heavy = [m for m in ('torch', 'sklearn', 'numpy', 'h5py') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_from_disk_sweep_fits_in_process(digits, monkeypatch):
    # --from-disk: a parallel sweep copied the whole training set into every worker
    import joblib

    from featcache.train.fitting import fit_head

    def no_parallel(*a, **k):
        raise AssertionError("a --from-disk sweep started worker processes")

    monkeypatch.setattr(joblib, "Parallel", no_parallel)
    cache, ext = digits
    fit = fit_head(ext["view"], "logreg", grid={"C": [0.01, 1.0]}, from_disk=True, n_jobs=2, cache_dir=cache,
                   log=False)
    assert len(fit.sweep) == 2 and fit.params["C"] in (0.01, 1.0)
