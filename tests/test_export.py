"""`featcache cache export` / export_view: npz and csv round-trips, parquet, atomic writes, errors."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_image
from featcache.cli import cli
from featcache.extraction.engine import extract
from featcache.errors import UnknownNameError
from featcache.store.export import ExportError, export_view
from featcache.store.views import load_features


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    """A 9-row view: two classes, one file name with a comma and a quote, features from a random resnet18."""
    root = tmp_path_factory.mktemp("exp")
    data = root / "shapes"
    for c, cls in enumerate(["circle", "square"]):
        for i in range(4):
            make_image(data / cls / f"img_{i}.png", seed=10 * c + i)
    make_image(data / "square" / 'odd, "name".png', seed=99)
    cache = root / "cache"
    r = extract(str(data), backbone="resnet18", weights="none", image_size=32, workers=0, cache_dir=cache)
    return r, cache


def test_npz_round_trip_equals_load_features(view, tmp_path):
    r, cache = view
    out = export_view(r.view, "npz", tmp_path / "x.npz")
    assert (out.rows, out.dim, out.format, out.feature_key) == (9, 512, "npz", r.feature_key)
    f = load_features(r.view)
    with np.load(out.path) as z:  # no allow_pickle needed
        assert set(z.files) == {"features", "labels", "ids", "split", "class_names", "feature_key", "identity"}
        np.testing.assert_array_equal(z["features"], f.features)
        assert z["features"].dtype == f.features.dtype
        np.testing.assert_array_equal(z["labels"], f.labels)
        assert z["ids"].tolist() == f.ids and z["split"].tolist() == f.split.tolist()
        assert z["class_names"].tolist() == f.class_names == ["circle", "square"]
        assert str(z["feature_key"]) == f.feature_key and json.loads(str(z["identity"])) == f.identity


def test_csv_round_trip_equals_load_features(view, tmp_path):
    r, cache = view
    out = export_view(r.feature_key, "csv", tmp_path / "sub" / "x.csv", cache_dir=cache)
    f = load_features(r.view)
    with open(out.path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:4] == ["id", "label", "split", "f0"] and rows[0][-1] == "f511" and len(rows) == 10
    assert [x[0] for x in rows[1:]] == f.ids and 'square/odd, "name".png' in f.ids
    assert [x[1] for x in rows[1:]] == [f.class_names[i] for i in f.labels]
    assert [x[2] for x in rows[1:]] == f.split.tolist()
    feats = np.array([[float(v) for v in x[3:]] for x in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(feats, f.features)  # 9 significant digits: exact for float32


def test_defaults_format_from_suffix_and_name_from_the_view(view, tmp_path, monkeypatch):
    r, cache = view
    monkeypatch.chdir(tmp_path)
    out = export_view(r.feature_key + ":shapes", cache_dir=cache)
    assert out.format == "npz" and Path(out.path) == tmp_path / f"{r.feature_key}-shapes.npz"
    out = export_view(r.view, None, tmp_path / "y.csv")
    assert out.format == "csv"
    out = export_view(r.view, "csv", tmp_path)  # a folder: the default name inside it
    assert Path(out.path) == tmp_path / f"{r.feature_key}-shapes.csv"
    assert export_view(r.view, None, tmp_path / "plain").format == "npz"  # no suffix: npz
    with pytest.raises(ExportError, match=r"suffix '\.tsv' is none of \.npz, \.csv, \.parquet.*--format"):
        export_view(r.view, None, tmp_path / "feats.tsv")
    assert not (tmp_path / "feats.tsv").exists()
    assert export_view(r.view, "csv", tmp_path / "feats.tsv").format == "csv"  # --format decides


def test_atomic_replace_leaves_no_temporary_files(view, tmp_path):
    r, _ = view
    target = tmp_path / "x.npz"
    target.write_text("old")
    export_view(r.view, "npz", target)
    assert np.load(target)["features"].shape == (9, 512)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


def test_parquet_without_pyarrow_says_how_to_install_it(view, tmp_path, monkeypatch):
    r, cache = view
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ExportError, match=r"parquet export needs pyarrow.*pip install pyarrow"):
        export_view(r.view, "parquet", tmp_path / "x.parquet")
    assert not any(tmp_path.iterdir())
    res = CliRunner().invoke(cli, ["cache", "export", r.feature_key, "--format", "parquet", "-o",
                                   str(tmp_path / "x.parquet"), "--cache", str(cache)])
    assert res.exit_code == 1 and res.output.startswith("Error: parquet export needs pyarrow")
    assert "pip install pyarrow" in res.output and "Traceback" not in res.output


def test_parquet_round_trip_when_pyarrow_is_installed(view, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    r, _ = view
    out = export_view(r.view, "parquet", tmp_path / "x.parquet")
    t = pq.read_table(out.path)
    f = load_features(r.view)
    assert t.column_names == ["id", "label", "split", "features"]
    assert t.column("id").to_pylist() == f.ids
    np.testing.assert_array_equal(np.array(t.column("features").to_pylist(), dtype=np.float32), f.features)
    assert json.loads(t.schema.metadata[b"class_names"]) == f.class_names


def test_unknown_format_and_unknown_view(view, tmp_path):
    r, cache = view
    with pytest.raises(UnknownNameError, match="unknown export format 'hdf'"):
        export_view(r.view, "hdf", tmp_path / "x")
    with pytest.raises(UnknownNameError):
        export_view("nosuchkey", "npz", tmp_path / "x.npz", cache_dir=cache)


def test_cli_cache_export(view, tmp_path):
    r, cache = view
    res = CliRunner().invoke(cli, ["cache", "export", r.feature_key[:12], "--format", "csv", "-o",
                                   str(tmp_path / "f.csv"), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    assert "exported 9 rows x 512" in res.output and (tmp_path / "f.csv").is_file()
    res = CliRunner().invoke(cli, ["cache", "export", r.view, "-o", str(tmp_path / "f.npz"), "--json"])
    doc = json.loads(res.stdout)
    assert (doc["rows"], doc["dim"], doc["format"], doc["path"]) == (9, 512, "npz", str(tmp_path / "f.npz"))


def test_csv_quotes_ids_with_a_newline_and_a_comma(tmp_path):
    """An id holding a newline (and a comma, and a carriage return) stays one quoted record."""
    data = tmp_path / "odd"
    make_image(data / "a" / "plain.png", seed=1)
    make_image(data / "a" / "line\nbreak, comma.png", seed=2)
    make_image(data / "b" / "carriage\rreturn.png", seed=3)
    make_image(data / "b" / "other.png", seed=4)
    r = extract(str(data), backbone="resnet18", weights="none", image_size=32, workers=0,
                cache_dir=tmp_path / "cache")
    f = load_features(r.view)
    assert "a/line\nbreak, comma.png" in f.ids and "b/carriage\rreturn.png" in f.ids
    out = export_view(r.view, "csv", tmp_path / "odd.csv")
    with open(out.path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 1 + 4 and all(len(x) == 3 + 512 for x in rows)
    assert [x[0] for x in rows[1:]] == f.ids
    assert [x[1] for x in rows[1:]] == [f.class_names[i] for i in f.labels]
    feats = np.array([[float(v) for v in x[3:]] for x in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(feats, f.features)
