"""Files a feature set keeps beside its rows, named by their digest (featcache.store.artifacts)."""
from __future__ import annotations

from featcache.store import artifacts
from featcache.store.artifacts import Kind

KIND = Kind("graph", ".bin")


def test_a_saved_file_is_named_by_its_digest_and_loaded_back(tmp_path):
    path = artifacts.save(tmp_path, KIND, b"weights and ops")
    assert path.parent == tmp_path and path.name.startswith("graph-") and path.suffix == ".bin"
    assert artifacts.load(tmp_path, KIND) == (b"weights and ops", [])
    assert artifacts.save(tmp_path, KIND, b"weights and ops") == path  # the same bytes, the same file
    assert artifacts.damaged(tmp_path, KIND) == []
    assert artifacts.load(tmp_path, Kind("other", ".bin")) == (None, [])


def test_damaged_and_temporary_files_are_never_loaded(tmp_path):
    path = artifacts.save(tmp_path, KIND, b"the real bytes")
    path.write_bytes(b"the real bytez")
    (tmp_path / f".tmp-host-1-abc-{path.name}").write_bytes(b"half written")
    assert artifacts.load(tmp_path, KIND) == (None, [path])
    assert artifacts.damaged(tmp_path, KIND) == [path]
    assert artifacts.save(tmp_path, KIND, b"the real bytes") == path  # saving again replaces the damaged copy
    assert artifacts.load(tmp_path, KIND) == (b"the real bytes", [])
