"""Stage one end to end: features equal a direct torchvision forward; caching; identity."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torchvision

import featcache
from featcache.extraction.backbones import get_backbone
from featcache.extraction.images import decode_image
from featcache.extraction.identity import resolve_identity

from conftest import make_image


def direct_inputs(paths, size):
    """The same preprocessing, written out by hand with torchvision.transforms.v2."""
    from torchvision.transforms import v2

    t = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return torch.stack([t(decode_image(str(p))) for p in paths])


def seeded_model(name, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.get_model(name, weights=None).eval()


def view_rows(result, ids):
    f = featcache.load_features(result.view)
    order = {i: k for k, i in enumerate(f.ids)}
    return f.features[[order[i] for i in ids]]


def resnet_pre_fc(m, x):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
    return torch.flatten(m.avgpool(x), 1)


def vgg_fc7(m, x):
    return m.classifier[:6](torch.flatten(m.avgpool(m.features(x)), 1))


def vgg_conv(m, x):
    return torch.flatten(m.features(x), 1)


@pytest.mark.parametrize("backbone,layer,pool,size,dim,forward", [
    ("resnet18", "penultimate", "avg", 64, 512, resnet_pre_fc),
    ("vgg16", "penultimate", "avg", 64, 4096, vgg_fc7),
    ("vgg16", "features", "none", 64, 512 * 2 * 2, vgg_conv),
])
def test_features_equal_direct_forward(image_folder, cache_dir, backbone, layer, pool, size, dim, forward):
    r = featcache.extract(str(image_folder), backbone=backbone, weights="none", layer=layer, pool=pool,
                          image_size=size, cache_dir=cache_dir, workers=0, batch_size=5)
    assert (r.rows, r.dim, r.extracted) == (12, dim, 12)
    f = featcache.load_features(r.view)
    paths = [image_folder / i for i in f.ids]
    with torch.inference_mode():
        expected = forward(seeded_model(backbone), direct_inputs(paths, size)).numpy()
    assert f.features.shape == (12, dim)
    assert np.abs(f.features - expected).max() <= 1e-5


def test_local_weights_file_equals_model_with_those_weights(image_folder, cache_dir, tmp_path):
    model = seeded_model("resnet18", seed=123)  # not the seed of --weights none
    path = tmp_path / "my-resnet18.pth"
    torch.save(model.state_dict(), path)
    r = featcache.extract(str(image_folder), backbone="resnet18", weights=str(path), image_size=48,
                          cache_dir=cache_dir, workers=0)
    f = featcache.load_features(r.view)
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = model(direct_inputs([image_folder / i for i in f.ids], 48)).numpy()
    assert np.abs(f.features - expected).max() <= 1e-5
    assert r.identity["weights"] == "file:my-resnet18.pth"


def test_efficientnet_lite0_real_weights_offline(image_folder, cache_dir):
    r = featcache.extract(str(image_folder), backbone="efficientnet_lite0", cache_dir=cache_dir, workers=0)
    assert (r.rows, r.dim) == (12, 1280)
    f = featcache.load_features(r.view)
    assert np.isfinite(f.features).all() and f.features.std() > 0


def test_second_run_is_a_cache_hit_without_building_the_model(image_folder, cache_dir, monkeypatch):
    kw = dict(backbone="resnet18", weights="none", image_size=32, cache_dir=cache_dir, workers=0)
    first = featcache.extract(str(image_folder), **kw)
    entry = get_backbone("resnet18")
    monkeypatch.setattr(entry, "builder", lambda: pytest.fail("model built on a cache hit"))
    second = featcache.extract(str(image_folder), **kw)
    assert second.cache_hit and not second.model_built
    assert (second.view, second.rows, second.extracted) == (first.view, 12, 0)


def test_grown_dataset_extracts_only_new_images(image_folder, cache_dir):
    kw = dict(backbone="resnet18", weights="none", image_size=32, cache_dir=cache_dir, workers=0)
    first = featcache.extract(str(image_folder), **kw)
    make_image(image_folder / "dog" / "new.png", seed=999)
    grown = featcache.extract(str(image_folder), **kw)
    assert (grown.rows, grown.extracted, grown.reused) == (13, 1, 12)
    assert grown.view != first.view and grown.feature_key == first.feature_key
    old = featcache.load_features(first.view)
    new = featcache.load_features(grown.view)
    np.testing.assert_array_equal(view_rows(grown, old.ids), old.features)
    assert "dog/new.png" in new.ids


def test_datasets_sharing_images_share_rows(image_folder, cache_dir, tmp_path):
    import shutil

    kw = dict(backbone="resnet18", weights="none", image_size=32, cache_dir=cache_dir, workers=0)
    featcache.extract(str(image_folder), **kw)
    other = tmp_path / "other"
    shutil.copytree(image_folder / "cat", other / "kitten")
    make_image(other / "puppy" / "p.png", seed=4242)
    r = featcache.extract(str(other), **kw)
    assert (r.rows, r.extracted, r.reused) == (7, 1, 6)


@pytest.mark.parametrize("change", [dict(layer="layer3"), dict(image_size=48), dict(weights="IMAGENET1K_V1"),
                                    dict(pool="max"), dict(dtype="float16"), dict(precision="bfloat16"),
                                    dict(decode="device"), dict(decode="draft")])
def test_identity_changes_with_everything_that_changes_features(change):
    base = dict(weights="none", layer="penultimate", pool="avg", image_size=32, precision="float32",
                dtype="float32")
    a, _, _ = resolve_identity("resnet18", **base)
    b, _, _ = resolve_identity("resnet18", **{**base, **change})
    assert a.key != b.key


def test_identity_ignores_batch_size_workers_and_device(image_folder, cache_dir):
    a = featcache.extract(str(image_folder), backbone="resnet18", weights="none", image_size=32,
                          cache_dir=cache_dir, workers=0, batch_size=3, device="cpu")
    b = featcache.extract(str(image_folder), backbone="resnet18", weights="none", image_size=32,
                          cache_dir=cache_dir, workers=1, batch_size=64, device="auto")
    assert a.feature_key == b.feature_key and b.cache_hit


def test_view_is_plain_hdf5_with_metadata(image_folder, cache_dir):
    r = featcache.extract(str(image_folder), backbone="resnet18", weights="none", image_size=32,
                          cache_dir=cache_dir, workers=0, dtype="float16")
    with h5py.File(r.view, "r") as f:
        assert f["features"].dtype == np.float16 and f["features"].shape == (12, 512)
        assert f["features"].chunks is None  # contiguous
        assert sorted(f["class_names"].asstr()[:]) == ["cat", "dog"]
        assert set(f["labels"][:].tolist()) == {0, 1}
        assert "cat/nested/img_5.png" in f["ids"].asstr()[:].tolist()
        assert f.attrs["feature_key"] == r.feature_key
        for attr in ("identity", "versions", "created", "skipped"):
            assert attr in f.attrs
    assert r.ignored == 1  # notes.txt


def test_workers_give_identical_features(image_folder, cache_dir, tmp_path):
    kw = dict(backbone="resnet18", weights="none", image_size=32, batch_size=4)
    a = featcache.extract(str(image_folder), cache_dir=tmp_path / "a", workers=0, **kw)
    b = featcache.extract(str(image_folder), cache_dir=tmp_path / "b", workers=2, **kw)
    np.testing.assert_array_equal(featcache.load_features(a.view).features, featcache.load_features(b.view).features)


def test_a_row_does_not_depend_on_the_rows_batched_with_it(image_folder, cache_dir, tmp_path):
    """Grown one image at a time (batches of one), then whole: equal to a one-shot run bit for bit.
    Unpadded, a batch of one takes another kernel path and differs in the last bits."""
    kw = dict(backbone="resnet18", weights="none", image_size=32, batch_size=4, workers=0)
    whole = featcache.load_features(featcache.extract(str(image_folder), cache_dir=tmp_path / "one", **kw).view)
    grown = tmp_path / "grown"
    for i, path in enumerate(sorted(image_folder.rglob("*.png"))[:3]):
        part = tmp_path / f"part{i}"
        (part / "cat").mkdir(parents=True)
        (part / "cat" / path.name).write_bytes(path.read_bytes())
        assert featcache.extract(str(part), cache_dir=grown, **kw).extracted == 1
    r = featcache.extract(str(image_folder), cache_dir=grown, **kw)
    assert (r.reused, r.extracted) == (3, 9)
    np.testing.assert_array_equal(featcache.load_features(r.view).features, whole.features)


def test_a_run_that_fails_before_computing_leaves_no_feature_set(image_folder, cache_dir):
    from featcache.errors import FeatcacheError
    from featcache.store.featureset import FeatureStore

    with pytest.raises(FeatcacheError, match="layer5"):
        featcache.extract(str(image_folder), backbone="resnet18", weights="none", image_size=32, layer="layer5",
                          cache_dir=cache_dir, workers=0)
    assert FeatureStore(cache_dir).sets() == []  # `cache ls` shows nothing half-made
    r = featcache.extract(str(image_folder), backbone="resnet18", weights="none", image_size=32,
                          cache_dir=cache_dir, workers=0)
    assert [s.key for s in FeatureStore(cache_dir).sets()] == [r.feature_key]


@pytest.mark.parametrize("rows,batch,parts", [(70, 32, 2), (64, 64, 2), (5, 32, 3), (1, 32, 2), (100, 7, 8),
                                             (9, 4, 1), (400, 32, 2)])
def test_batch_chunks_share_the_first_and_last_batches_among_the_workers(rows, batch, parts):
    from featcache.extraction.images import batch_chunks

    batches = batch_chunks(rows, batch, parts)
    joined = [[i for chunk in chunks for i in chunk] for chunks in batches]
    assert joined == [list(range(s, min(s + batch, rows))) for s in range(0, rows, batch)]
    for i, chunks in enumerate(batches):  # the first and the last `parts` batches are shared
        sizes = [len(c) for c in chunks]
        shared = i == 0 or i >= len(batches) - parts
        assert len(chunks) == (min(parts, sum(sizes)) if shared else 1)
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    if (rows, batch, parts) == (400, 32, 2):  # 13 batches: the first and the last two cut in two
        assert [len(chunks) for chunks in batches] == [2] + [1] * 10 + [2, 2]


def test_merged_chunks_equal_the_batch_collated_whole():
    from featcache.extraction.images import RawJpeg, collate, merge_chunks

    items = [(0, torch.full((3, 2, 2), 0.0), None, 0.5), (1, None, "OSError: truncated", 0.25),
             (2, RawJpeg(b"\xff\xd8jpeg"), None, 0.25), (3, torch.full((3, 2, 2), 3.0), None, 0.5),
             (4, None, "OSError: empty", 0.25)]
    whole = collate(items)
    for cut in ([2], [1, 3], [4]):
        bounds = [0, *cut, len(items)]
        merged = merge_chunks([collate(items[a:b]) for a, b in zip(bounds, bounds[1:])])
        assert merged.positions.tolist() == whole.positions.tolist() == [0, 3]
        assert torch.equal(merged.images, whole.images)
        assert merged.bad == whole.bad and merged.seconds == whole.seconds
        assert [p for p, _ in merged.jpegs] == [p for p, _ in whole.jpegs] == [2]
    only_bad = merge_chunks([collate(items[1:2]), collate(items[4:5])])
    assert only_bad.images is None and only_bad.positions.tolist() == [] and len(only_bad.bad) == 2


def test_workers_decode_a_batch_in_chunks_with_bad_files_skipped(image_folder, tmp_path):
    """A batch of 12 decoded in 3 chunks by 3 workers, one file in it unreadable: the rows
    (bad one skipped) equal a run decoding in the main process."""
    (image_folder / "dog" / "empty.png").write_bytes(b"")
    kw = dict(backbone="resnet18", weights="none", image_size=32, batch_size=12, on_error="skip")
    a = featcache.extract(str(image_folder), cache_dir=tmp_path / "a", workers=0, **kw)
    b = featcache.extract(str(image_folder), cache_dir=tmp_path / "b", workers=3, **kw)
    assert a.rows == b.rows == 12 and [s["id"] for s in b.skipped] == ["dog/empty.png"]
    fa, fb = featcache.load_features(a.view), featcache.load_features(b.view)
    assert list(fa.ids) == list(fb.ids)
    np.testing.assert_array_equal(fa.features, fb.features)
