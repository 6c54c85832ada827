"""The option specs: one definition, built from keywords, and feature keys that never move."""
from __future__ import annotations

import dataclasses

import pytest

import featcache
from featcache.errors import UnknownNameError
from featcache.extraction.augment import identity_extra
from featcache.extraction.decoders import DECODE_MODES, DECODERS
from featcache.extraction.identity import resolve_identity, spec_from_identity, with_extra
from featcache.specs import BackboneSpec, DataSpec, RunSpec, specs_from_keywords

# Keys computed before the specs existed (featcache 0.x, store format 1): a store written then
# must be found again, so these never change.
PINNED = [
    (BackboneSpec("resnet18", weights="none", image_size=32), "resnet18-75956466f1ec"),
    (BackboneSpec("efficientnet_lite0"), "efficientnet_lite0-a871b757d66c"),
    (BackboneSpec("resnet18", weights="none", layer="layer3", pool="max", dtype="float16", precision="bfloat16",
                  decode="draft"), "resnet18-fd4fb5fb813f"),
    (BackboneSpec("efficientnet_lite0", image_size=160, decode="device"), "efficientnet_lite0-333ef4d4c7e9"),
]


@pytest.mark.parametrize("spec,key", PINNED)
def test_feature_keys_of_existing_stores_do_not_change(spec, key):
    assert resolve_identity(spec, device="cpu").identity.key == key
    assert resolve_identity(spec_from_identity(resolve_identity(spec, device="cpu").identity.to_dict()),
                            device="cpu").identity.key == key


def test_augmented_key_does_not_change_and_plain_key_ignores_augment():
    spec = BackboneSpec("resnet18", weights="none", image_size=32, augment=2, augment_seed=3)
    plain = resolve_identity(spec, device="cpu")
    assert plain.identity.key == "resnet18-75956466f1ec"
    assert with_extra(plain, identity_extra(3)).identity.key == "resnet18-2eea58a25b82"


def test_extract_with_keywords_gives_the_pinned_key(image_folder, cache_dir):
    r = featcache.extract(str(image_folder), backbone="resnet18", weights="none", image_size=32,
                          cache_dir=cache_dir, workers=0, device="cpu", augment=1, augment_seed=3)
    assert r.feature_key == "resnet18-75956466f1ec"
    assert r.augmented["feature_key"] == "resnet18-2eea58a25b82"
    again = featcache.extract(DataSpec(str(image_folder)), BackboneSpec("resnet18", weights="none", image_size=32),
                              RunSpec(cache_dir=cache_dir, workers=0, device="cpu"))
    assert again.cache_hit and again.view == r.view


def test_keywords_land_in_the_spec_that_owns_them():
    data, backbone, run = specs_from_keywords("imgs/", "resnet18", None, layer="layer3", batch_size=8,
                                              root="r", flush_seconds=5.0)
    assert data == DataSpec("imgs/", root="r")
    assert backbone == BackboneSpec("resnet18", layer="layer3")
    assert run == RunSpec(batch_size=8, flush_every=5.0)
    _, b2, r2 = specs_from_keywords(data, backbone, run, layer="layer4")
    assert (b2.layer, r2) == ("layer4", run)


def test_unknown_keyword_names_the_close_match():
    with pytest.raises(UnknownNameError, match="did you mean 'image_size'"):
        specs_from_keywords("imgs/", image_sise=32)


def test_specs_are_frozen_and_decoders_match_the_modes():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BackboneSpec().layer = "x"
    assert tuple(DECODERS) == DECODE_MODES


def test_every_spec_field_has_its_cli_option_in_every_command_that_builds_the_spec():
    from featcache.cli import cli
    from featcache.specs import field_names

    params = {name: {p.name for p in cli.commands[name].params} for name in ("extract", "fit-head", "predict")}
    data, backbone, run = set(field_names(DataSpec)), set(field_names(BackboneSpec)), set(field_names(RunSpec))
    for name in ("extract", "fit-head"):
        assert data | backbone | run <= params[name], name
    assert (data - {"label_column", "labelled"}) | run <= params["predict"]  # a head brings its BackboneSpec
    assert not backbone & params["predict"]


def test_pipeline_keys_are_the_spec_fields(tmp_path):
    from featcache.pipeline.spec import parse_pipeline

    doc = {"data": {"source": "builtin:digits", "split_column": "s"},
           "extract": {"batch_size": 8, "flush_rows": 100, "augment": 1, "augment_seed": 2},
           "backbones": [{"name": "resnet18", "weights": "none", "image_size": 32, "decode": "draft"}],
           "heads": [{"name": "logreg"}]}
    p = parse_pipeline(doc, base_dir=tmp_path)
    assert p.data == DataSpec("builtin:digits", split_column="s")
    assert p.extract.run == RunSpec(batch_size=8, flush_rows=100)
    assert p.backbones[0].spec == BackboneSpec("resnet18", weights="none", image_size=32, decode="draft",
                                               augment=1, augment_seed=2)
