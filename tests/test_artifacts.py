"""Files a feature set keeps beside its rows, named by their digest (featcache.store.artifacts)."""
from __future__ import annotations

import pytest

from featcache.store import artifacts
from featcache.store.artifacts import Kind

KIND = Kind("graph", ".bin", "the test graph", "makes it again")


def test_a_saved_file_is_named_by_its_digest_and_loaded_back(tmp_path):
    path = artifacts.save(tmp_path, KIND, b"weights and ops")
    assert path.parent == tmp_path and path.name.startswith("graph-") and path.suffix == ".bin"
    assert artifacts.load(tmp_path, KIND) == (b"weights and ops", [])
    assert artifacts.save(tmp_path, KIND, b"weights and ops") == path  # the same bytes, the same file
    assert artifacts.damaged(tmp_path, KIND) == []
    assert artifacts.load(tmp_path, KIND._replace(prefix="other")) == (None, [])


def test_damaged_and_temporary_files_are_never_loaded(tmp_path):
    path = artifacts.save(tmp_path, KIND, b"the real bytes")
    path.write_bytes(b"the real bytez")
    (tmp_path / f".tmp-host-1-abc-{path.name}").write_bytes(b"half written")
    assert artifacts.load(tmp_path, KIND) == (None, [path])
    assert artifacts.damaged(tmp_path, KIND) == [path]
    assert artifacts.save(tmp_path, KIND, b"the real bytes") == path  # saving again replaces the damaged copy
    assert artifacts.load(tmp_path, KIND) == (b"the real bytes", [])


def test_kept_passes_a_damaged_file_over_with_a_warning(tmp_path):
    path = artifacts.save(tmp_path, KIND, b"the real bytes")
    assert artifacts.kept(tmp_path, KIND) == b"the real bytes"
    path.write_bytes(b"the real bytez")
    with pytest.warns(RuntimeWarning, match=r"the test graph .*graph-\w+\.bin is damaged.*this run makes it again"):
        assert artifacts.kept(tmp_path, KIND) is None


def test_keep_on_a_full_disk_only_warns(tmp_path, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "save", full_disk)
    with pytest.warns(RuntimeWarning, match=r"could not keep the test graph in .*No space left.*next run into this "
                                            r"feature set makes it again"):
        artifacts.keep(tmp_path, KIND, b"bytes")


def test_every_kind_has_its_own_prefix():
    assert len({k.prefix for k in artifacts.KINDS}) == len(artifacts.KINDS)


def test_keep_replaces_damaged_files_of_its_kind(tmp_path):
    old = artifacts.save(tmp_path, KIND, b"made by an earlier run")
    old.write_bytes(b"made by an earlier rum")
    other = artifacts.save(tmp_path, KIND._replace(prefix="other"), b"another kind")
    artifacts.keep(tmp_path, KIND, b"made again")
    assert not old.exists() and other.exists() and artifacts.load(tmp_path, KIND) == (b"made again", [])


def test_keep_leaves_an_intact_file_of_its_kind_alone(tmp_path):
    first = artifacts.save(tmp_path, KIND, b"kept by another torchrun rank")
    artifacts.keep(tmp_path, KIND, b"the same graph, saved with another serialisation id")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
