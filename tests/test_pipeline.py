"""Pipelines: parsing and its errors, a run with cache reuse, `featcache run`, the shipped TOML files."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_image
from featcache.cli import cli
from featcache.errors import UnknownNameError
from featcache.pipeline.runner import (
    MIN_RATE_ROWS,
    Pipeline,
    PipelineError,
    load_pipeline,
    parse_pipeline,
    resolve_cache_dir,
    run_pipeline,
)

PIPELINES = Path(__file__).parents[1] / "pipelines"

TINY = """
name = "tiny"
[data]
source = "pets"
[extract]
workers = 0
[[backbones]]
name = "resnet18"
weights = "none"
image_size = 32
[[backbones]]
label = "r18-layer3"
name = "resnet18"
weights = "none"
layer = "layer3"
image_size = 32
[[heads]]
name = "logreg"
[[heads]]
name = "ncm"
sweep = true
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def parse(text: str, tmp_path: Path) -> Pipeline:
    return load_pipeline(write(tmp_path / "p.toml", text))


MINIMAL = '[data]\nsource = "builtin:digits"\n[[backbones]]\nname = "resnet18"\n[[heads]]\nname = "logreg"\n'


# --------------------------------------------------------------------------- parsing


def test_minimal_pipeline_defaults(tmp_path):
    p = parse(MINIMAL, tmp_path)
    assert p.name == "p" and p.data.source == "builtin:digits" and p.cache is None
    assert (p.split.val_fraction, p.split.test_fraction, p.split.seed) == (0.15, 0.15, 0)
    b = p.backbones[0]
    assert (b.label, b.weights, b.layer, b.pool, b.image_size) == ("resnet18", "DEFAULT", "penultimate", "avg", None)
    assert b.decode == "workers"
    assert parse(MINIMAL.replace('name = "resnet18"', 'name = "resnet18"\ndecode = "device"'),
                 tmp_path).backbones[0].decode == "device"
    h = p.heads[0]
    assert (h.label, h.params, h.grid, h.sweep, h.backbones) == ("logreg", {}, {}, False, None)
    assert load_pipeline(write(tmp_path / "my demo (v2).toml", MINIMAL)).name == "my-demo-v2"


@pytest.mark.parametrize("text,kind,bad,suggestion", [
    (MINIMAL.replace("source", "sourse"), "[data] key", "sourse", "source"),
    ("descripton = 'x'\n" + MINIMAL, "top-level key", "descripton", "description"),
    (MINIMAL.replace('name = "logreg"', 'name = "logreg"\nparmas = {C = 1.0}'), "[[heads]] #1 (logreg) key", "parmas",
     "params"),
    (MINIMAL + '[split]\nval_frac = 0.2\n', "[split] key", "val_frac", "val_fraction"),
    (MINIMAL.replace('name = "resnet18"', 'name = "resnet18"\nimage_sise = 32'), "[[backbones]] #1 (resnet18) key",
     "image_sise", "image_size"),
])
def test_unknown_keys_name_the_close_match_and_the_valid_keys(tmp_path, text, kind, bad, suggestion):
    with pytest.raises(UnknownNameError) as e:
        parse(text, tmp_path)
    msg = str(e.value)
    assert f"unknown {kind} {bad!r}" in msg and f"did you mean {suggestion!r}" in msg
    assert "p.toml" in msg and ("valid" in msg or "expected one of" in msg)


def test_bad_head_values_fail_when_the_file_is_read(tmp_path):
    text = MINIMAL.replace('name = "logreg"', 'name = "svm"\ngrid = {C = [0.1, -1.0]}')
    with pytest.raises(PipelineError, match=r"p\.toml.*\[\[heads\]\] #1 \(svm\): SVMHead: C=-1\.0 is not valid"):
        parse(text, tmp_path)
    with pytest.raises(PipelineError, match=r"KNNHead: n_neighbors=0 is not valid"):
        parse(MINIMAL.replace('name = "logreg"', 'name = "knn"\nparams = {n_neighbors = 0}'), tmp_path)


def test_unknown_backbone_and_head_names(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        parse(MINIMAL.replace('"resnet18"', '"resnet-18"'), tmp_path)
    with pytest.raises(UnknownNameError, match="did you mean 'logreg'"):
        parse(MINIMAL.replace('"logreg"', '"logrge"'), tmp_path)
    with pytest.raises(UnknownNameError, match="unknown \\[\\[backbones\\]\\] #1 \\(resnet18\\) pool 'mean'"):
        parse(MINIMAL.replace('name = "resnet18"', 'name = "resnet18"\npool = "mean"'), tmp_path)


@pytest.mark.parametrize("edit,expect", [
    (lambda t: t + '[split]\nval_fraction = "0.15"\n',
     '[split] val_fraction = "0.15" is a string; expected a number, e.g. val_fraction = 0.15'),
    (lambda t: t.replace('name = "resnet18"', 'name = "resnet18"\nimage_size = 32.5'),
     "[[backbones]] #1 (resnet18) image_size = 32.5 is a float; expected an integer"),
    (lambda t: t.replace('name = "logreg"', 'name = "logreg"\nsweep = "yes"'),
     '[[heads]] #1 (logreg) sweep = "yes" is a string; expected a boolean'),
    (lambda t: t.replace("[[heads]]", "[heads]"),
     "top-level heads is a single table (write [[heads]], not [heads]); expected an array of tables"),
    (lambda t: t + "[extract]\nworkers = true\n", "[extract] workers = true is a boolean; expected an integer"),
    (lambda t: t.replace('name = "logreg"', 'name = "logreg"\ngrid = { C = 1.0 }'),
     "grid.C = 1.0 is not a list of values"),
    (lambda t: t.replace('name = "logreg"', 'name = "logreg"\nparams = { alpha = 1.0 }'),
     "head 'logreg' has no parameter(s) 'alpha'"),
    (lambda t: t + "[split]\nval_fraction = 0.6\ntest_fraction = 0.5\n", "expected a sum below 1"),
    (lambda t: t.replace('name = "resnet18"', 'name = "resnet18"\n[[backbones]]\nname = "resnet18"'),
     "two [[backbones]] are labelled 'resnet18'"),
    (lambda t: t.replace('name = "logreg"', 'name = "logreg"\nbackbones = ["resnet50"]'),
     "unknown backbone label in [[heads]] #1 (logreg) backbones 'resnet50'"),
    (lambda t: 'name = "a b"\n' + t, "name = 'a b' cannot name a folder"),
    (lambda t: t.replace('name = "resnet18"', 'name = "resnet18"\nweights = "nope/w.pth"'),
     "weights = 'nope/w.pth': no such file"),
    (lambda t: t.replace('name = "resnet18"', 'name = "resnet18"\ndecode = "gpu"'),
     "unknown [[backbones]] #1 (resnet18) decode 'gpu'"),
])
def test_wrong_types_and_values_name_the_key_and_what_was_expected(tmp_path, edit, expect):
    with pytest.raises((PipelineError, UnknownNameError)) as e:
        parse(edit(MINIMAL), tmp_path)
    assert expect in str(e.value)


def test_augment_defaults_and_values(tmp_path):
    x = parse(MINIMAL, tmp_path).extract
    assert (x.augment, x.augment_seed) == (0, 0)
    x = parse(MINIMAL + "[extract]\naugment = 2\naugment_seed = 7\n", tmp_path).extract
    assert (x.augment, x.augment_seed) == (2, 7)


@pytest.mark.parametrize("lines,expect", [
    ("augment = -1", ("[extract] augment = -1 is out of range; expected 0 (no augmented copies) or a positive "
                      "number of augmented copies per training image, e.g. augment = 2")),
    ("augment = 1.5", "[extract] augment = 1.5 is a float; expected an integer, e.g. augment = 2"),
    ('augment = "2"', '[extract] augment = "2" is a string; expected an integer, e.g. augment = 2'),
    ("augment = true", "[extract] augment = true is a boolean; expected an integer"),
    ("augment = 2\naugment_seed = 0.5", ("[extract] augment_seed = 0.5 is a float; expected an integer, "
                                         "e.g. augment_seed = 0")),
    ('augment_seed = "x"', '[extract] augment_seed = "x" is a string; expected an integer'),
])
def test_bad_augment_values_name_the_key_the_value_and_what_was_expected(tmp_path, lines, expect):
    with pytest.raises(PipelineError) as e:
        parse(MINIMAL + "[extract]\n" + lines + "\n", tmp_path)
    assert expect in str(e.value) and "p.toml" in str(e.value)


def test_missing_data_table_and_missing_sections(tmp_path):
    with pytest.raises(PipelineError, match=r"p\.toml: has no \[data\] table; expected e\.g\."):
        parse('[[backbones]]\nname = "resnet18"\n[[heads]]\nname = "logreg"\n', tmp_path)
    with pytest.raises(PipelineError, match=r"\[data\] has no source"):
        parse(MINIMAL.replace('source = "builtin:digits"', 'root = "x"'), tmp_path)
    with pytest.raises(PipelineError, match="declares no backbone"):
        parse('[data]\nsource = "builtin:digits"\n[[heads]]\nname = "logreg"\n', tmp_path)
    with pytest.raises(PipelineError, match="declares no head"):
        parse('[data]\nsource = "builtin:digits"\n[[backbones]]\nname = "resnet18"\n', tmp_path)
    with pytest.raises(PipelineError, match="not valid TOML"):
        parse("[data\nsource = 1", tmp_path)
    with pytest.raises(PipelineError, match="does not exist"):
        load_pipeline(tmp_path / "missing.toml")


def test_relative_paths_resolve_against_the_toml_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = ('cache = "store"\n[data]\nsource = "../data/train.csv"\nroot = "../data/images"\n'
            'path_column = "image_names"\nlabel_column = ""\n[[backbones]]\nname = "resnet18"\n'
            "[[heads]]\nname = \"mlp\"\nparams = { hidden_sizes = [64, 32] }\ngrid = { hidden_sizes = [[8], [16]] }\n")
    p = load_pipeline(write(tmp_path / "exp" / "pipes" / "x.toml", text))
    assert p.data.source == str((tmp_path / "exp" / "data" / "train.csv").resolve())
    assert p.data.root == str((tmp_path / "exp" / "data" / "images").resolve())
    assert p.data.label_column is None and p.data.path_column == "image_names"
    assert p.cache == str((tmp_path / "exp" / "pipes" / "store").resolve())
    assert p.heads[0].params == {"hidden_sizes": (64, 32)} and p.heads[0].grid == {"hidden_sizes": [(8,), (16,)]}


def test_cache_precedence(tmp_path, monkeypatch):
    p = parse('cache = "filecache"\n' + MINIMAL, tmp_path)
    monkeypatch.delenv("FEATCACHE_CACHE", raising=False)
    assert resolve_cache_dir(p) == tmp_path / "filecache"
    assert resolve_cache_dir(parse(MINIMAL, tmp_path)) == Path("cache")
    monkeypatch.setenv("FEATCACHE_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir(p) == tmp_path / "env"
    assert resolve_cache_dir(p, tmp_path / "arg") == tmp_path / "arg"


# --------------------------------------------------------------------------- running


def pets_folder(root):
    """12 images, 6 per class (the conftest image_folder's images, without its extras)."""
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(6):
            make_image(root / cls / f"img_{i}.png", seed=100 * c + i)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One pipeline (2 backbones x 2 heads) on a 12-image folder, run twice."""
    root = tmp_path_factory.mktemp("tiny")
    pets_folder(root / "pets")
    toml = write(root / "tiny.toml", TINY)
    cache = root / "cache"
    first = run_pipeline(load_pipeline(toml), cache_dir=cache, n_jobs=1)
    second = run_pipeline(toml, cache_dir=cache, n_jobs=1)
    return root, toml, cache, first, second


def test_run_fits_every_head_on_every_backbone(tiny_run):
    root, _, cache, first, _ = tiny_run
    assert [(r.backbone, r.head) for r in first.results] == [
        ("resnet18", "logreg"), ("resnet18", "ncm"), ("r18-layer3", "logreg"), ("r18-layer3", "ncm")]
    dims = {b.label: b.dim for b in first.backbones}
    assert dims == {"resnet18": 512, "r18-layer3": 256}
    for r in first.results:
        assert 0.0 <= r.test_acc <= 1.0 and 0.0 <= r.val_acc <= 1.0 and r.fit_s >= 0
        assert r.balanced_acc is not None and r.macro_f1 is not None and r.metrics["test"]["confusion_matrix"]
        assert Path(r.head_path).is_file() and Path(r.head_path).parent.parent.name == "heads"
    assert [r.params for r in first.results if r.head == "ncm"][0].keys() == {"center", "temperature"}
    assert all(b.extracted == 12 and b.reused == 0 for b in first.backbones)
    assert first.extracted == 24 and first.reused == 0
    out = cache / "pipelines" / "tiny"
    assert Path(first.summary_json) == out / "summary.json" and Path(first.summary_png) == out / "summary.png"
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the fits are in the results log as well
    assert len((cache / "results.jsonl").read_text().splitlines()) == 8


def test_second_run_extracts_nothing_and_reuses_every_row(tiny_run):
    _, _, cache, first, second = tiny_run
    assert [b.feature_key for b in second.backbones] == [b.feature_key for b in first.backbones]
    for b in second.backbones:
        assert (b.extracted, b.reused, b.cache_hit) == (0, 12, True)
    assert (second.extracted, second.reused) == (0, 24)
    # 12 rows are too few for an honest rate: the saving is reported as unknown, not invented
    assert 12 < MIN_RATE_ROWS and all(b.time_saved_s is None for b in second.backbones)
    doc = json.loads((cache / "pipelines" / "tiny" / "summary.json").read_text())
    assert doc["time_saved_s"] is None and doc["time_saved_unknown_for"] == ["resnet18", "r18-layer3"]
    assert "time saved unknown" in second.summary()


def test_time_saved_uses_the_newest_measurement_of_that_feature_key(tiny_run):
    root, toml, cache, first, _ = tiny_run
    key = first.backbones[0].feature_key
    fake = {"backbones": [{"feature_key": key, "rate": {"seconds_per_row": 0.5, "rows": 400, "device": "cpu",
                                                        "measured_at": "2030-01-01T00:00:00Z", "pipeline": "other"}}]}
    write(cache / "pipelines" / "other" / "summary.json", json.dumps(fake))
    try:
        r = run_pipeline(toml, cache_dir=cache, n_jobs=1)
    finally:
        (cache / "pipelines" / "other" / "summary.json").unlink()
    b0, b1 = r.backbones
    assert b0.time_saved_s == pytest.approx(12 * 0.5) and "pipeline 'other'" in b0.rate_source
    assert b1.time_saved_s is None  # no measurement for the other key
    assert r.time_saved_s == pytest.approx(6.0)
    assert "saved ~6.0 s" in r.summary()


def test_cli_run_json_is_one_document(tiny_run, monkeypatch):
    root, toml, cache, *_ = tiny_run
    monkeypatch.delenv("FEATCACHE_CACHE", raising=False)
    r = CliRunner().invoke(cli, ["run", str(toml), "--cache", str(cache), "--json", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["extracted"], doc["reused"]) == (0, 24)
    assert [(b["extracted"], b["reused"]) for b in doc["backbones"]] == [(0, 12), (0, 12)]
    assert len(doc["results"]) == 4
    for row in doc["results"]:
        assert {"backbone", "feature_key", "head", "params", "val_acc", "test_acc", "balanced_acc", "macro_f1",
                "fit_s"} <= set(row)
        assert set(row["metrics"]) == {"val", "test"} and "accuracy" in row["metrics"]["test"]


def test_the_best_row_is_chosen_on_validation_not_on_test():
    from featcache.pipeline.runner import HeadRow, PipelineResult

    def row(head, val, test):
        return HeadRow("b", "resnet18", "k", head, head, {}, val, test, test, test, 0.1, 0.01, "",
                       metrics={"val": {"accuracy": val}, "test": {"accuracy": test}})

    rows = [row("logreg", 0.70, 0.60), row("knn", 0.80, 0.50), row("svm", 0.80, 0.90), row("ncm", None, 0.99)]
    res = PipelineResult("p", None, "c", "d", [], rows, 1.0, "now")
    assert res.best is rows[1]  # the best validation accuracy (the first of a tie), whatever its test score
    assert res.to_dict()["best"] == {"backbone": "b", "head": "knn", "chosen_by": "val_acc", "val_acc": 0.8,
                                     "test_acc": 0.5}
    assert "best on validation (*): knn on b, validation accuracy 0.800, test accuracy 0.500" in res.summary()
    assert "knn *" in res.table() and "svm *" not in res.table()
    assert PipelineResult("p", None, "c", "d", [], [row("ncm", None, 0.9)], 1.0, "now").best is None


def test_cli_run_text_and_cache_from_the_file(tiny_run, monkeypatch):
    root, toml, cache, *_ = tiny_run
    monkeypatch.delenv("FEATCACHE_CACHE", raising=False)
    monkeypatch.chdir(root)
    # no --cache: the file's `cache` applies, relative to the file
    with_cache = write(root / "with_cache.toml", 'cache = "cache"\n' + TINY.replace('"tiny"', '"tiny2"'))
    r = CliRunner().invoke(cli, ["run", str(with_cache), "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert "BACKBONE" in r.output and "reused 12 (cache hit)" in r.output and "best on validation (*)" in r.output
    assert (cache / "pipelines" / "tiny2" / "summary.json").is_file()
    bad = write(root / "bad.toml", TINY.replace("[extract]", "[extrakt]"))
    r = CliRunner().invoke(cli, ["run", str(bad)])
    assert r.exit_code == 1 and r.output.startswith("Error: unknown top-level key 'extrakt'; did you mean 'extract'")


AUGMENTED = """
name = "aug"
[data]
source = "pets"
[extract]
workers = 0
augment = 2
[[backbones]]
name = "resnet18"
weights = "none"
image_size = 32
[[heads]]
name = "logreg"
[[heads]]
name = "ncm"
"""


@pytest.fixture(scope="module")
def augmented_runs(tmp_path_factory):
    """The 12-image folder run without augmentation, then with augment = 2 twice, then with another seed."""
    root = tmp_path_factory.mktemp("aug")
    pets_folder(root / "pets")
    cache = root / "cache"
    plain = run_pipeline(parse_pipeline(tomllib.loads(AUGMENTED.replace("augment = 2", "")), base_dir=root),
                         cache_dir=cache, n_jobs=1)
    toml = write(root / "aug.toml", AUGMENTED)
    first = run_pipeline(toml, cache_dir=cache, n_jobs=1)
    second = run_pipeline(toml, cache_dir=cache, n_jobs=1)
    reseeded = run_pipeline(write(root / "aug_seed1.toml", AUGMENTED.replace("augment = 2", "augment = 2\naugment_seed = 1")
                                  .replace('"aug"', '"aug-seed1"')),
                            cache_dir=cache, n_jobs=1)
    return cache, plain, first, second, reseeded


def test_augment_trains_every_head_on_more_rows(augmented_runs):
    cache, plain, first, _, _ = augmented_runs
    assert plain.augment is None and all(b.augmented is None for b in plain.backbones)
    assert all(r.n_train_augmented == 0 and r.n_train > 0 for r in plain.results)
    assert [r.head for r in first.results] == ["logreg", "ncm"]
    for p, a in zip(plain.results, first.results):
        # the same plain split, plus 2 copies of every training image; val and test stay plain
        assert a.n_train == p.n_train and a.n_train_augmented == 2 * p.n_train
        assert a.n_train + a.n_train_augmented > p.n_train
        assert sum(a.metrics["test"]["confusion_matrix"][0]) + sum(a.metrics["test"]["confusion_matrix"][1]) == \
            sum(p.metrics["test"]["confusion_matrix"][0]) + sum(p.metrics["test"]["confusion_matrix"][1])
    b, pb = first.backbones[0], plain.backbones[0]
    # the plain feature set is the same with or without augmentation: reused, not extracted again
    assert b.feature_key == pb.feature_key and (b.extracted, b.reused) == (0, 12)
    a = b.augmented
    assert a["feature_key"] != b.feature_key and (a["copies"], a["seed"], a["rows"]) == (2, 0, 24)
    assert (a["extracted"], a["reused"], a["cache_hit"]) == (24, 0, False)
    assert (first.extracted, first.reused) == (24, 12)  # totals count plain and augmented rows
    assert first.augment == {"copies": 2, "seed": 0}
    text = first.summary()
    assert "heads trained with 2 augmented copies per training image (seed 0)" in text
    assert "augmented [" in text and "TRAIN" in text and f"{p.n_train}+{2 * p.n_train}" in text
    doc = json.loads((cache / "pipelines" / "aug" / "summary.json").read_text())
    assert doc["augment"] == {"copies": 2, "seed": 0} and doc["backbones"][0]["augmented"]["rows"] == 24
    assert [r["n_train_augmented"] for r in doc["results"]] == [2 * p.n_train] * 2


def test_second_augmented_run_extracts_nothing(augmented_runs):
    _, _, first, second, _ = augmented_runs
    b = second.backbones[0]
    assert (b.extracted, b.reused, b.cache_hit) == (0, 12, True)
    assert (b.augmented["extracted"], b.augmented["reused"], b.augmented["cache_hit"]) == (0, 24, True)
    assert b.augmented["feature_key"] == first.backbones[0].augmented["feature_key"]
    assert (second.extracted, second.reused) == (0, 36)
    assert [r.n_train_augmented for r in second.results] == [r.n_train_augmented for r in first.results]
    assert "reused 24 (cache hit)" in second.summary()


def test_augment_seed_is_part_of_the_augmented_identity(augmented_runs):
    _, _, first, _, reseeded = augmented_runs
    a0, a1 = first.backbones[0].augmented, reseeded.backbones[0].augmented
    assert reseeded.backbones[0].feature_key == first.backbones[0].feature_key  # plain rows: reused
    assert a1["feature_key"] != a0["feature_key"] and (a1["seed"], a1["extracted"], a1["reused"]) == (1, 24, 0)
    assert reseeded.extracted == 24 and reseeded.augment == {"copies": 2, "seed": 1}


def test_a_failing_backbone_names_itself(tmp_path):
    (tmp_path / "pets").mkdir()
    p = parse(TINY, tmp_path)
    with pytest.raises(PipelineError, match=r"pipeline 'tiny', \[data\]: no images found"):
        run_pipeline(p, cache_dir=tmp_path / "c")


# --------------------------------------------------------------------------- the shipped pipelines


def _folder(root: Path, classes, n: int, ext: str = ".jpg", seed: int = 1000) -> None:
    for c, cls in enumerate(classes):
        for i in range(n):
            make_image(root / cls / f"{cls}_{i}{ext}", seed=seed + 37 * c + i, size=(36, 28))


def _vehicles(base: Path) -> None:
    d = base / "data" / "vehicles"
    lines = ["image_names,emergency_or_no"]
    for i in range(16):
        make_image(d / "images" / f"{i + 1}.jpg", seed=500 + i, size=(48, 32))
        lines.append(f"{i + 1}.jpg,{i % 2}")
    write(d / "train.csv", "\n".join(lines) + "\n")


STAND_INS = {  # the layout each shipped pipeline documents, with a few generated images
    "demo": lambda base: _folder(base / "clipart", ["animals", "food", "tools"], 6, ".png"),
    "vehicles_vgg16": _vehicles,
    "cats_dogs_vgg16": lambda base: _folder(base / "data" / "cats_dogs", ["cats", "dogs"], 8),
    "malaria_densenet121": lambda base: (
        _folder(base / "data" / "malaria" / "cell_images", ["Parasitized", "Uninfected"], 8, ".png"),
        write(base / "data" / "malaria" / "cell_images" / "Parasitized" / "Thumbs.db", "not an image")),
    "resnet18_transfer": lambda base: (
        _folder(base / "data" / "hymenoptera_data" / "train", ["ants", "bees"], 6),
        _folder(base / "data" / "hymenoptera_data" / "val", ["ants", "bees"], 3, seed=2000)),
}


def test_every_shipped_pipeline_has_a_stand_in():
    assert sorted(p.stem for p in PIPELINES.glob("*.toml")) == sorted(STAND_INS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_shipped_pipeline_runs_on_a_stand_in(name, tmp_path):
    path = PIPELINES / f"{name}.toml"
    text = path.read_text()
    shipped = load_pipeline(path)  # parses as shipped (names, weights names, head parameters)
    assert shipped.name == name
    # the comments say where the data and the weights come from
    assert "Data" in text and "Weights" in text
    if not shipped.data.source.startswith("builtin:"):
        assert "data/" in text and ("hub/checkpoints" in text and "weights = \"/path/to/" in text)
    doc = tomllib.loads(text)
    base = tmp_path / "repo"
    STAND_INS[name](base)
    if doc["data"]["source"].startswith("builtin:"):
        doc["data"]["source"] = "../clipart"
    for b in doc["backbones"]:  # offline and fast: random weights, small images
        b["weights"], b["image_size"] = "none", 32
    doc.setdefault("extract", {})["workers"] = 0
    p = parse_pipeline(doc, base_dir=base / "pipelines", source=f"{name}.toml (stand-in)", default_name=name)
    r = run_pipeline(p, cache_dir=tmp_path / "cache", n_jobs=1)
    expected = [(b.label, h.label) for b in p.backbones for h in p.heads_for(b)]
    assert [(x.backbone, x.head) for x in r.results] == expected
    assert all(x.test_acc is not None for x in r.results)
    n = {"demo": 18, "vehicles_vgg16": 16, "cats_dogs_vgg16": 16, "malaria_densenet121": 16,
         "resnet18_transfer": 18}[name]
    assert all(b.rows == n and b.extracted == n for b in r.backbones)
    if name == "vehicles_vgg16":
        assert [b.dim for b in r.backbones] == [512, 4096]  # 25088 at 224 px; 512 x 1 x 1 at 32 px
    assert Path(r.summary_json).is_file() and Path(r.summary_png).is_file()


def test_summary_figure_is_redrawn_only_when_what_it_shows_changes(tmp_path, monkeypatch):
    import featcache.pipeline.runner as runner

    drawn = []

    def fake_plot(points, path, **kwargs):
        drawn.append([p["fit_s"] for p in points])
        Path(path).write_bytes(b"png")
        return Path(path)

    monkeypatch.setattr(runner, "plot_pipeline_summary", fake_plot)

    def row(test_acc=0.8, fit_s=0.010):
        return runner.HeadRow(backbone="r18", backbone_name="resnet18", feature_key="k", head="logreg",
                              head_name="logreg", params={}, val_acc=0.7, test_acc=test_acc, balanced_acc=None,
                              macro_f1=None, fit_s=fit_s, predict_s=0.0, head_path="x")

    png = tmp_path / "summary.png"

    def run(r):
        path, inputs = runner._plot_summary([r], ["r18"], png, "t")
        (tmp_path / "summary.json").write_text(json.dumps({"summary_png_inputs": inputs}))
        return path

    assert run(row()) == png and len(drawn) == 1
    run(row(fit_s=0.011))  # timing jitter: the same figure
    assert len(drawn) == 1
    run(row(fit_s=0.05))  # 0.7 decades slower: visibly moved
    run(row(fit_s=0.05, test_acc=0.81))  # a new score
    assert len(drawn) == 3
    png.unlink()
    run(row(fit_s=0.05, test_acc=0.81))  # a missing figure is drawn again
    assert len(drawn) == 4
