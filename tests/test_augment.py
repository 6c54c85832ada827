"""Cached augmented views: seeded, reused as copies grow, only training rows feed the head."""
from __future__ import annotations

import numpy as np

import featcache
from featcache.extraction.augment import augment_image, source_id
from featcache.train.fitting import fit_head

from conftest import make_image

KW = dict(backbone="resnet18", weights="none", image_size=32, workers=0)


def test_copies_are_seeded_and_reused_when_more_are_asked(image_folder, cache_dir, tmp_path):
    a = featcache.extract(str(image_folder), cache_dir=cache_dir, augment=2, **KW)
    assert a.augmented["rows"] == 24 and a.augmented["extracted"] == 24
    b = featcache.extract(str(image_folder), cache_dir=cache_dir, augment=3, **KW)
    assert b.cache_hit and b.augmented["extracted"] == 12 and b.augmented["reused"] == 24
    assert b.augmented["feature_key"] == a.augmented["feature_key"] != a.feature_key
    other = featcache.extract(str(image_folder), cache_dir=tmp_path / "c2", augment=2, **{**KW, "workers": 2})
    fa = featcache.load_features(a.augmented["view"])
    np.testing.assert_array_equal(fa.features, featcache.load_features(other.augmented["view"]).features)
    plain = featcache.load_features(a.view)
    assert not np.allclose(fa.features[0], plain.features[0])  # a copy is not the plain image
    assert featcache.extract(str(image_folder), cache_dir=cache_dir, augment=2, augment_seed=1,
                             **KW).augmented["feature_key"] != a.augmented["feature_key"]


def test_augment_image_is_deterministic():
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(augment_image(img, 5)), np.asarray(augment_image(img, 5)))
    assert not np.array_equal(np.asarray(augment_image(img, 5)), np.asarray(augment_image(img, 6)))


def test_only_training_images_are_augmented_with_split_folders(tmp_path, cache_dir):
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(3):
                make_image(tmp_path / "d" / split / c / f"{i}.png", seed=hash((split, c, i)) % 10_000)
    r = featcache.extract(str(tmp_path / "d"), cache_dir=cache_dir, augment=2, **KW)
    aug = featcache.load_features(r.augmented["view"])
    assert len(aug.ids) == 12 and all(i.startswith("train/") for i in aug.ids)


def test_fit_head_uses_copies_of_training_rows_only(image_folder, cache_dir):
    r = featcache.extract(str(image_folder), cache_dir=cache_dir, augment=2, **KW)
    res = fit_head(r.view, "logreg", cache_dir=cache_dir, augmented=r.augmented["view"], val_fraction=0.25,
                   test_fraction=0.25, seed=0)
    n_train = res.split["n_train"]
    assert res.split["n_train_augmented"] == 2 * n_train
    aug = featcache.load_features(r.augmented["view"])
    assert {source_id(i) for i in aug.ids} == set(featcache.load_features(r.view).ids)
