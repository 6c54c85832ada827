"""Crash safety with real child processes: SIGKILL at several points, Ctrl-C, concurrent writers,
write failures; then the same command resumes and the result equals an uninterrupted run."""
from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.store.maintenance import gc, verify
from featcache.store.featureset import FeatureStore

from conftest import make_image

pytestmark = pytest.mark.slow  # real child processes: ~2 min on an idle 2-core machine

N = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rel") / "data"
    for i in range(N):
        make_image(root / ("a" if i % 2 else "b") / f"{i:03d}.png", seed=i, size=(24, 24))
    return root


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    r = featcache.extract(str(dataset), **KW, cache_dir=tmp_path_factory.mktemp("ref"))
    return featcache.load_features(r.view)


KW = dict(backbone="resnet18", weights="none", image_size=32, batch_size=4)
ARGS = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "4",
        "--flush-rows", "8", "--json", "-q"]


def run_cli(dataset, cache, *, failpoint=None, workers=1, preexec=None, session=False, extra=()):
    env = {**os.environ, "FEATCACHE_FAILPOINT": failpoint or ""}
    cmd = [sys.executable, "-m", "featcache", "extract", "--data", str(dataset), "--cache", str(cache),
           "--workers", str(workers), *ARGS, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=preexec,
                          start_new_session=session)


def rows_in_store(cache) -> int:
    return verify(cache, check_values=False).rows


def finish_and_compare(dataset, cache, reference, expect_extracted=None):
    r = run_cli(dataset, cache)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    if expect_extracted is not None:
        assert doc["extracted"] == expect_extracted
    f = featcache.load_features(doc["view"])
    assert f.ids == reference.ids
    np.testing.assert_array_equal(f.features, reference.features)  # exactly, CPU float32
    rep = verify(cache)
    assert rep.ok, rep.problems
    return doc


@pytest.mark.parametrize("point", ["batch:3", "shard-append:3", "publish:2", "after-flush:2"])
def test_sigkill_then_resume_equals_uninterrupted(dataset, reference, tmp_path, point):
    cache = tmp_path / "cache"
    r = run_cli(dataset, cache, failpoint=point)
    assert r.returncode == -signal.SIGKILL
    rep = verify(cache)
    assert rep.ok, rep.problems  # readable and consistent right after the kill
    before = rep.rows
    assert before % 8 == 0  # only whole flushed shards are visible
    if point == "after-flush:2":
        assert before == 16
    doc = finish_and_compare(dataset, cache, reference, expect_extracted=N - before)
    assert doc["reused"] == before
    cleaned = gc(cache)
    if point == "publish:2":
        assert cleaned.removed_temporary  # the killed writer's temp shard
    assert not verify(cache).temporary_files


def test_sigkill_during_view_publish(dataset, reference, tmp_path):
    cache = tmp_path / "cache"
    r = run_cli(dataset, cache, failpoint="view-publish")
    assert r.returncode == -signal.SIGKILL
    assert rows_in_store(cache) == N
    assert not [p for p in (cache / "features").glob("*/views/*.h5") if not p.name.startswith(".")]
    finish_and_compare(dataset, cache, reference, expect_extracted=0)


def _sigint_as_in_a_terminal():
    """The child handles SIGINT even when this test runs in a background job, whose commands
    inherit SIGINT ignored (a non-interactive shell's `cmd &`; Python then installs no handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_flushes_and_says_how_to_resume(dataset, reference, tmp_path):
    cache = tmp_path / "cache"
    r = run_cli(dataset, cache, failpoint="batch:5:INT", session=True, preexec=_sigint_as_in_a_terminal)
    assert r.returncode == 130, r.stderr
    assert "Error: interrupted" in r.stderr and "run the same command again" in r.stderr
    assert "Traceback" not in r.stderr
    saved = rows_in_store(cache)
    assert saved >= 8  # at least the flushed shards, plus whatever the writer had when stopped
    finish_and_compare(dataset, cache, reference, expect_extracted=N - saved)


def test_two_processes_on_one_store(dataset, reference, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "FEATCACHE_FAILPOINT": ""}
    cmd = [sys.executable, "-m", "featcache", "extract", "--data", str(dataset), "--cache", str(cache),
           "--workers", "0", *ARGS]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    views = {json.loads(o[0])["view"] for o in outs}
    assert len(views) == 1
    np.testing.assert_array_equal(featcache.load_features(views.pop()).features, reference.features)
    assert verify(cache).ok  # rows both computed are duplicates, not problems
    gc(cache)
    rep = verify(cache)
    assert rep.ok and rep.rows == N


def test_write_error_mid_run_is_clear_and_resumable(dataset, reference, tmp_path):
    cache = tmp_path / "cache"
    featcache.extract(str(dataset), **KW, cache_dir=cache, workers=0, flush_rows=8)  # warm the digest cache
    for p in (cache / "features").glob("*/views/*.h5"):
        p.unlink()
    for p in (cache / "features").glob("*/rows/*.h5"):
        p.unlink()

    def small_files():  # like `ulimit -f`: any file past 48 KiB fails to grow
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, 48 << 10))

    r = run_cli(dataset, cache, preexec=small_files, extra=["--flush-rows", "1000"])
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Error: writing rows") and "re-run the same command" in r.stderr
    assert verify(cache).ok
    finish_and_compare(dataset, cache, reference)


@pytest.mark.parametrize("large", [False, True], ids=["view-built-in-memory", "view-written-by-hdf5"])
def test_view_write_error_keeps_rows(dataset, reference, tmp_path, large):
    cache = tmp_path / "cache"

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, 48 << 10))

    # 8-row shards fit, the 40-row view does not; "large" takes the path of views over
    # VIEW_IN_MEMORY_BYTES, which HDF5 writes to the file itself
    extra = ("-c", "import sys, featcache.store.featureset as s; s.VIEW_IN_MEMORY_BYTES = 0; from featcache.cli import main; "
             "sys.argv[0] = 'featcache'; main()") if large else ("-m", "featcache")
    cmd = [sys.executable, *extra, "extract", "--data", str(dataset), "--cache", str(cache), "--workers", "1", *ARGS]
    r = subprocess.run(cmd, env={**os.environ, "FEATCACHE_FAILPOINT": ""}, capture_output=True, text=True,
                       timeout=300, preexec_fn=small_files)
    assert r.returncode == 1 and "Error: cannot write the view" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert rows_in_store(cache) == N
    finish_and_compare(dataset, cache, reference, expect_extracted=0)


@contextlib.contextmanager
def paused_extraction(data, cache, point="batch:2"):
    """A real `featcache extract` child stopped (SIGSTOP, with its workers) in the middle of its run."""
    p = subprocess.Popen([sys.executable, "-m", "featcache", "extract", "--data", str(data), "--cache", str(cache),
                          "--workers", "1", *ARGS], env={**os.environ, "FEATCACHE_FAILPOINT": f"{point}:STOP"},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while Path(f"/proc/{p.pid}/stat").read_text().split(") ")[1][0] != "T":
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        yield p
    finally:
        os.killpg(p.pid, signal.SIGCONT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    p.doc = json.loads(out)


def test_readers_and_fit_head_work_while_another_process_extracts(dataset, reference, tmp_path):
    cache = tmp_path / "cache"
    first = finish_and_compare(dataset, cache, reference)
    other = tmp_path / "other"
    for i in range(12):
        make_image(other / "c" / f"{i}.png", seed=1000 + i, size=(24, 24))
    with paused_extraction(other, cache) as child:
        f = featcache.load_features(first["view"])
        np.testing.assert_array_equal(f.features, reference.features)
        fit = subprocess.run([sys.executable, "-m", "featcache", "fit-head", "--features", first["view"], "--head",
                              "ncm", "--cache", str(cache), "--json"], capture_output=True, text=True, timeout=300)
        assert fit.returncode == 0, fit.stderr
        assert child.poll() is None  # still mid-run
    assert child.doc["extracted"] == 12


def test_gc_leaves_a_set_alone_while_an_extraction_adds_rows(dataset, reference, tmp_path):
    cache = tmp_path / "cache"
    with paused_extraction(dataset, cache, point="batch:5") as child:
        assert rows_in_store(cache) >= 8  # flushed rows that no view references yet
        rep = gc(cache, prune_rows=True)
        assert rep.pruned_rows == 0 and len(rep.busy) == 1
        assert child.poll() is None
    f = featcache.load_features(child.doc["view"])
    np.testing.assert_array_equal(f.features, reference.features)
    rep = gc(cache, prune_rows=True)  # finished: nothing to prune, nothing busy
    assert (rep.pruned_rows, rep.busy) == (0, [])


def test_damaged_store_files_are_detected_and_repaired(dataset, reference, tmp_path):
    cache = tmp_path / "cache"
    doc = finish_and_compare(dataset, cache, reference)
    fs = FeatureStore(cache).find(doc["feature_key"])
    shard = fs.shards()[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    rep = verify(cache)
    assert not rep.ok and any("damaged row shard" in p.problem for p in rep.problems)
    r = run_cli(dataset, cache)  # the view still exists: a cache hit does not read rows
    assert r.returncode == 0
    Path(doc["view"]).unlink()
    r = run_cli(dataset, cache)
    assert r.returncode == 1 and "cache gc --repair" in r.stderr and "Traceback" not in r.stderr
    gc(cache, repair=True)
    finish_and_compare(dataset, cache, reference)
    ident = fs.dir / "identity.json"
    ident.write_text(ident.read_text().replace('"pool": "avg"', '"pool": "max"'))
    r = run_cli(dataset, cache)
    assert r.returncode == 1 and "edited by hand" in r.stderr
