"""Cached steps without torch: the resolution index, and commands that answer from the cache.

The index (featcache.store.resolutions) maps a request to the feature key a full resolution
gave; a hit must give exactly that key, and anything that could change the key (weights
file, library versions, featcache's identity code, any identity option) must be a miss.
"""
from __future__ import annotations

import os
import sqlite3

import pytest

from featcache.store import resolutions
from featcache.store.maintenance import verify
from featcache.store.resolutions import INDEX_FILE, Resolution, ResolutionIndex, build_request

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
    from featcache.store.digests import digest_file

    index.remember(build_request(BASE), Resolution("k", "cpu", str(weights), digest_file(weights, sha256=True)))
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
