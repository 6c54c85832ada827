"""Head files: pickle-free round trip and every way a file can be wrong."""
from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
from sklearn.datasets import make_blobs

import featcache.train.persist as persist
from featcache.errors import HeadError
from featcache.train.heads import list_heads, make_head
from featcache.train.persist import (
    FORMAT_VERSION,
    HEAD_SUFFIX,
    LoadedHead,
    check_feature_key,
    load_head,
    save_head,
)

SMALL = {
    "linear": dict(lr=1e-2, batch_size=32, max_epochs=20),
    "mlp": dict(hidden_sizes=(16, 8), lr=1e-2, batch_size=32, max_epochs=20, dropout=0.1),
}
CLASS_NAMES = ["cat", "dog", "eel"]
KEY = "efficientnet_lite0/pool/224-center/abc123"


@pytest.fixture(scope="module")
def data():
    X, y = make_blobs(n_samples=150, n_features=12, centers=3, cluster_std=2.0, random_state=2)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return {name: make_head(name, **SMALL.get(name, {})).fit(X, y) for name in list_heads()}


@pytest.fixture
def saved(tmp_path, fitted):
    return save_head(fitted["logreg"], tmp_path / "model", name="logreg", feature_key=KEY,
                     class_names=CLASS_NAMES)


def _rewrite_meta(path, **changes):
    """Rewrite the JSON document of a head file (to fake other versions / names)."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["__meta__"].tobytes().decode())
    meta.update(changes)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


# ----------------------------------------------------------------- round trip
@pytest.mark.parametrize("name", ["knn", "linear", "logreg", "mlp", "ncm", "svm"])
def test_round_trip_predicts_identically(name, tmp_path, data, fitted):
    X, _ = data
    head = fitted[name]
    meta = {"dataset": "clipart", "n_train": 150, "cv_scores": (0.9, 0.95), "seed": np.int64(3)}
    path = save_head(head, tmp_path / f"{name}.head.npz", name=name, feature_key=KEY,
                     class_names=CLASS_NAMES, metadata=meta)
    assert path == tmp_path / f"{name}.head.npz" and path.is_file()
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind
    loaded = load_head(path)
    assert isinstance(loaded, LoadedHead)
    assert type(loaded.head) is type(head)
    assert loaded.head.get_params() == head.get_params()  # tuples come back as tuples
    np.testing.assert_array_equal(loaded.head.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(loaded.head.predict(X), head.predict(X))
    assert (loaded.name, loaded.feature_key, loaded.class_names) == (name, KEY, CLASS_NAMES)
    assert loaded.metadata == {"dataset": "clipart", "n_train": 150, "cv_scores": [0.9, 0.95],
                               "seed": 3}
    assert set(loaded.versions) == {"featcache", "numpy", "torch", "scikit-learn", "python"}
    assert loaded.versions["numpy"] == np.__version__
    assert loaded.format_version == FORMAT_VERSION and loaded.path == path


def test_suffix_is_added_and_string_labels_survive(tmp_path, data):
    X, y = data
    head = make_head("ncm").fit(X, np.array(CLASS_NAMES)[y])
    path = save_head(head, str(tmp_path / "sub" / "ncm"), name="ncm", feature_key=KEY,
                     class_names=None)
    assert path.name == "ncm" + HEAD_SUFFIX
    loaded = load_head(path)
    assert loaded.class_names is None and loaded.metadata == {}
    assert list(loaded.head.classes_) == CLASS_NAMES
    np.testing.assert_array_equal(loaded.head.predict(X), head.predict(X))


def test_overwrite_is_atomic(tmp_path, fitted, saved, monkeypatch):
    before = saved.read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(persist.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_head(fitted["svm"], saved, name="svm", feature_key=KEY, class_names=None)
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]


# ----------------------------------------------------------------- save errors
def test_save_refuses_bad_input(tmp_path, fitted):
    with pytest.raises(HeadError, match="expected a fitted head; call fit first"):
        save_head(make_head("knn"), tmp_path / "a", name="knn", feature_key=KEY, class_names=None)
    with pytest.raises(HeadError, match="KNNHead, but name='svm' is registered for SVMHead"):
        save_head(fitted["knn"], tmp_path / "a", name="svm", feature_key=KEY, class_names=None)
    with pytest.raises(HeadError, match=r"metadata\['fn'\] = .*cannot be saved"):
        save_head(fitted["knn"], tmp_path / "a", name="knn", feature_key=KEY, class_names=None,
                  metadata={"fn": print})
    with pytest.raises(HeadError, match="feature_key=''"):
        save_head(fitted["knn"], tmp_path / "a", name="knn", feature_key="", class_names=None)
    with pytest.raises(HeadError, match="parameter random_state = RandomState.*an int or None"):
        head = make_head("svm", random_state=np.random.RandomState(0))
        save_head(head.fit(*make_blobs(random_state=0)), tmp_path / "a", name="svm",
                  feature_key=KEY, class_names=None)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------- load errors
def test_missing_file(tmp_path):
    with pytest.raises(HeadError, match=r"head file '.*nope\.head\.npz' does not exist"):
        load_head(tmp_path / "nope.head.npz")
    with pytest.raises(HeadError, match="is not a file"):
        load_head(tmp_path)


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(HeadError, match=r"model\.head\.npz' is truncated or corrupted.*re-save"):
        load_head(saved)
    saved.write_bytes(b"")
    with pytest.raises(HeadError, match="is empty"):
        load_head(saved)


def test_corrupted_file(saved):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as archive:  # the middle of the largest array's stored bytes
        entry = max(archive.infolist(), key=lambda e: e.compress_size)
    middle = entry.header_offset + 30 + len(entry.filename) + len(entry.extra) + entry.compress_size // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    saved.write_bytes(bytes(data))
    with pytest.raises(HeadError, match=r"truncated or corrupted.*Bad CRC-32"):
        load_head(saved)


def test_not_an_npz(tmp_path):
    path = tmp_path / "notes.head.npz"
    path.write_text("just some text\n")
    with pytest.raises(HeadError, match="is not an .npz archive, not a featcache head file"):
        load_head(path)


def test_npz_that_is_not_a_head(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.arange(3.0))
    with pytest.raises(HeadError, match="without a '__meta__' entry, so not a featcache head"):
        load_head(path)
    _meta = {"format": "something-else"}
    np.savez(path, __meta__=np.frombuffer(json.dumps(_meta).encode(), dtype=np.uint8))
    with pytest.raises(HeadError, match="of format 'something-else', not 'featcache-head'"):
        load_head(path)
    np.savez(path, __meta__=np.frombuffer(b"\xff{not json", dtype=np.uint8))
    with pytest.raises(HeadError, match="unreadable '__meta__' entry"):
        load_head(path)


class _Exploit:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_content_is_never_executed(tmp_path, saved):
    marker = tmp_path / "pwned"
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["coef_"] = np.array([_Exploit(marker)], dtype=object)  # an object array = pickle
    with open(saved, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(HeadError, match="contains pickled Python objects.*never loads"):
        load_head(saved)
    raw = tmp_path / "raw.head.npz"
    raw.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(HeadError, match="is a pickle, not a featcache head file"):
        load_head(raw)
    assert not marker.exists()


def test_unknown_format_version(saved):
    _rewrite_meta(saved, format_version=FORMAT_VERSION + 98)
    with pytest.raises(HeadError, match=r"format version 99, newer .*upgrade featcache"):
        load_head(saved)
    _rewrite_meta(saved, format_version="1")
    with pytest.raises(HeadError, match="invalid format version '1'"):
        load_head(saved)


def test_unknown_head_name(saved):
    _rewrite_meta(saved, head="logrek")
    with pytest.raises(HeadError, match=r"model\.head\.npz' holds an unknown head 'logrek'; "
                                        r"did you mean 'logreg'"):
        load_head(saved)


def test_unknown_parameter(saved):
    _rewrite_meta(saved, params={"C": 1.0, "max_iter": 10, "l1_ratio": 0.5})
    with pytest.raises(HeadError, match="parameter.* l1_ratio .*upgrade featcache or re-fit"):
        load_head(saved)


def test_inconsistent_state(saved):
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["coef_"] = arrays["coef_"][:, :5]  # fewer weights than features
    with open(saved, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(HeadError, match="inconsistent 'logreg' head"):
        load_head(saved)


# ----------------------------------------------------------------- feature identity
def test_check_feature_key(saved):
    loaded = load_head(saved)
    check_feature_key(loaded, KEY)
    other = "resnet50/avgpool/224-center/ffff"
    with pytest.raises(HeadError) as err:
        check_feature_key(loaded, other)
    message = str(err.value)
    assert KEY in message and other in message and "re-fit" in message
