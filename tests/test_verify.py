"""cache verify finds values edited inside otherwise valid store files; gc --repair moves them aside."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import featcache
from featcache.store.maintenance import gc, verify
from featcache.store.featureset import FeatureStore

KW = dict(backbone="resnet18", weights="none", image_size=32, workers=0, batch_size=4, flush_rows=4)


@pytest.fixture
def extracted(image_folder, cache_dir):
    r = featcache.extract(str(image_folder), cache_dir=cache_dir, **KW)
    assert verify(cache_dir).ok
    return r, FeatureStore(cache_dir).find(r.feature_key)


@pytest.mark.parametrize("value", [1.0, np.nan])
def test_a_value_edited_in_a_row_shard_is_found(extracted, cache_dir, image_folder, value):
    r, fs = extracted
    shard = fs.shards()[1]
    with h5py.File(shard, "r+") as f:
        f["features"][2, 7] = value if np.isnan(value) else f["features"][2, 7] + value
    Path(r.view).unlink()  # a view rebuilt from the edited shard agrees with it: only the checksum tells
    featcache.extract(str(image_folder), cache_dir=cache_dir, **KW)
    rep = verify(cache_dir)
    [p] = [p for p in rep.problems if p.path == str(shard)]  # (a NaN also makes the new view unequal to itself)
    assert ("checksum" in p.problem or "NaN" in p.problem) and "--repair" in p.fix
    gc(cache_dir, repair=True)  # moved aside; the rows are computed again by the next run that needs them
    Path(r.view).unlink(missing_ok=True)
    assert featcache.extract(str(image_folder), cache_dir=cache_dir, **KW).extracted == 4
    assert verify(cache_dir).ok


def test_a_value_edited_in_a_view_is_found(extracted, cache_dir):
    r, _ = extracted
    with h5py.File(r.view, "r+") as f:
        f["features"][0, 0] += 1.0
    [p] = verify(cache_dir).problems
    assert p.path == r.view and "differ from the stored rows" in p.problem
    assert verify(cache_dir, check_values=False).ok  # --fast skips values
