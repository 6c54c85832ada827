"""torchrun --nproc_per_node 2 on CPU (gloo): equals a single-process run; a killed rank resumes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.store.maintenance import verify

from conftest import make_image

pytestmark = pytest.mark.slow  # two ranks with a process group each: ~30 s on an idle 2-core machine

N = 30
TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "4",
        "--flush-rows", "4", "--workers", "0", "--json", "-q"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "data"
    for i in range(N):
        make_image(root / f"c{i % 3}" / f"{i:03d}.png", seed=7000 + i, size=(24, 24))
    return root


def torchrun(dataset, cache, failpoint="", rank=""):
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    env = {**os.environ, "FEATCACHE_FAILPOINT": failpoint, "OMP_NUM_THREADS": "1"}
    if rank:
        env["FEATCACHE_FAILPOINT_RANK"] = rank
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "featcache", "extract",
           "--data", str(dataset), "--cache", str(cache), *ARGS]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def single(dataset, cache):
    env = {**os.environ, "FEATCACHE_FAILPOINT": "", "OMP_NUM_THREADS": "1"}  # as torchrun sets per rank
    r = subprocess.run([sys.executable, "-m", "featcache", "extract", "--data", str(dataset), "--cache", str(cache),
                        *ARGS], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_two_ranks_equal_a_single_process(dataset, tmp_path):
    r = torchrun(dataset, tmp_path / "dist")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # rank 0 alone prints
    assert doc["extracted"] == N and doc["rows"] == N
    ref = single(dataset, tmp_path / "one")
    a, b = featcache.load_features(doc["view"]), featcache.load_features(ref["view"])
    assert a.ids == b.ids and doc["feature_key"] == ref["feature_key"]
    np.testing.assert_array_equal(a.features, b.features)
    # both ranks wrote shards of their own
    shards = list((tmp_path / "dist" / "features").glob("*/rows/*.h5"))
    assert len({s.name.split("-")[-2] for s in shards}) == 2  # two writer pids
    again = torchrun(dataset, tmp_path / "dist")
    assert json.loads(again.stdout)["cache_hit"]


def test_killed_rank_leaves_the_job_resumable(dataset, tmp_path):
    cache = tmp_path / "dist"
    r = torchrun(dataset, cache, failpoint="after-flush:2", rank="1")
    assert r.returncode != 0
    rep = verify(cache)
    assert rep.ok, rep.problems
    saved = rep.rows
    assert 8 <= saved < N  # rank 1's two flushes at least; not the whole job
    resumed = torchrun(dataset, cache)
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["extracted"] == N - saved
    ref = single(dataset, tmp_path / "one")
    np.testing.assert_array_equal(featcache.load_features(doc["view"]).features,
                                  featcache.load_features(ref["view"]).features)
