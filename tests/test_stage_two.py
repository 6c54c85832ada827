"""Stage two end to end on builtin:digits through the CLI: extract, fit every head, predict, results."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from click.testing import CliRunner

from featcache.cli import cli
from featcache.heads import list_heads

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


def test_results_table_best_first_and_filtered(digits):
    cache, ext = digits
    invoke("fit-head", "--features", ext["view"], "--head", "logreg", "--C", "0.01,1", "--cache", cache)
    r = invoke("results", "--key", ext["feature_key"][:10], "--cache", cache, "--json")
    rows = json.loads(r.stdout)
    accs = [x["test_acc"] for x in rows]
    assert accs == sorted(accs, reverse=True) and len(rows) >= 1
    table = invoke("results", "--cache", cache)
    assert "TEST_ACC" in table.output and "logreg" in table.output


def test_sweep_chooses_on_validation_and_says_so(digits):
    cache, ext = digits
    r = invoke("fit-head", "--features", ext["view"], "--head", "logreg", "--C", "0.0001,1",
               "--cache", cache, "--json")
    fit = json.loads(r.stdout)
    assert fit["params"]["C"] == 1 and len(fit["sweep"]) == 2


def test_unlabelled_view_and_single_class_are_refused(tmp_path):
    from conftest import make_image

    cache = tmp_path / "c"
    for i in range(4):
        make_image(tmp_path / "u" / f"{i}.png", seed=i)
        make_image(tmp_path / "one" / "only" / f"{i}.png", seed=10 + i)
    for data, msg in (("u", "no labels"), ("one", "single class")):
        r = invoke("fit-head", "--data", tmp_path / data, *EXTRACT, "--head", "logreg", "--cache", cache)
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output


def test_head_of_another_identity_and_corrupted_head_are_refused(digits, tmp_path):
    cache, ext = digits
    fit = json.loads(invoke("fit-head", "--features", ext["view"], "--head", "ncm", "--cache", cache,
                            "--json").stdout)
    from featcache.persist import check_feature_key, load_head

    with pytest.raises(Exception, match=ext["feature_key"]):
        check_feature_key(load_head(fit["head_path"]), "resnet18-000000000000")
    bad = tmp_path / "bad.head.npz"
    bad.write_bytes(open(fit["head_path"], "rb").read()[:100])
    r = invoke("predict", "--head", bad, "--data", cache / "builtin" / "digits" / "3", "--cache", cache)
    assert r.exit_code == 1 and r.output.startswith("Error:") and "bad.head.npz" in r.output
    r = invoke("fit-head", "--features", ext["view"], "--head", "logregg", "--cache", cache)
    assert r.exit_code == 1 and "did you mean 'logreg'" in r.output
