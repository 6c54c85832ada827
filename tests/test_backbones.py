"""Backbone registry, weights resolution, offline behaviour, layers."""
from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from featcache.backbones import describe_all, get_backbone, list_backbones, register_backbone
from featcache.errors import UnknownNameError, WeightsError
from featcache.keys import resolve_identity
from featcache.layers import FeatureExtractor


def test_every_torchvision_classification_model_is_registered():
    names = set(list_backbones())
    assert set(torchvision.models.list_models(module=torchvision.models)) <= names
    assert "efficientnet_lite0" in names


def test_unknown_backbone_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet50'"):
        get_backbone("resnet5O")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(get_backbone("resnet18"))


def test_describe_all_dims(tmp_path):
    rows = {r["name"]: r for r in describe_all(tmp_path)}
    expected = {"vgg16": 4096, "resnet18": 512, "resnet50": 2048, "densenet121": 1024, "efficientnet_b0": 1280,
                "vit_b_16": 768, "efficientnet_lite0": 1280, "squeezenet1_1": 512}
    assert {k: rows[k]["dim"] for k in expected} == expected
    assert rows["resnet50"]["default_weights"] == "IMAGENET1K_V2"
    assert "IMAGENET1K_V1" in rows["resnet50"]["weights"]
    assert describe_all(tmp_path) == list(rows.values())  # cached table reads back the same


def test_weights_resolution_and_preprocessing_from_the_weights():
    e = get_backbone("resnet50")
    v2 = e.resolve_weights("DEFAULT")
    assert v2.label == "ResNet50_Weights.IMAGENET1K_V2" and v2.preprocess.resize == 232
    v1 = e.resolve_weights("IMAGENET1K_V1")
    assert v1.preprocess.resize == 256 and v1.digest != v2.digest
    assert e.resolve_weights("ResNet50_Weights.IMAGENET1K_V1") == v1
    none = e.resolve_weights("none")
    assert none.kind == "none" and none.preprocess == v2.preprocess  # DEFAULT's transforms
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V2"):
        e.resolve_weights("IMAGENET1K_V3")


def test_missing_weights_file_and_image_size_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        get_backbone("resnet18").resolve_weights(str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="too small"):
        resolve_identity("resnet18", weights="none", image_size=2)


def test_offline_error_says_how_to_provide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    e = get_backbone("resnet18")
    choice = e.resolve_weights("DEFAULT")
    with pytest.raises(WeightsError) as err:
        e.build(choice)
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and "TORCH_HOME" in msg and "--weights" in msg
    assert str(tmp_path / "torch-home") in msg


def test_prefilled_torch_home_is_used_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", lambda *a, **k: pytest.fail("network used"))
    model = torchvision.models.resnet18()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(model.state_dict(), ckpt / "resnet18-f37072fd.pth")
    e = get_backbone("resnet18")
    built = e.build(e.resolve_weights("DEFAULT"))  # read from the cache, no download
    torch.testing.assert_close(built.state_dict()["fc.weight"], model.state_dict()["fc.weight"])


def test_weights_file_of_another_architecture(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    e = get_backbone("resnet18")
    with pytest.raises(WeightsError, match="do not fit the architecture ResNet.*unexpected"):
        e.build(e.resolve_weights(str(path)))
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        e.build(e.resolve_weights(str(bad)))


def test_unknown_layer_suggests_module_names():
    m = torchvision.models.resnet18()
    with pytest.raises(UnknownNameError, match="layer4"):
        FeatureExtractor(m, layer="layer44")


def test_pooling_of_spatial_layers():
    m = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert FeatureExtractor(m, "layer4", "avg")(x).shape == (2, 512)
        assert FeatureExtractor(torchvision.models.resnet18().eval(), "layer4", "none")(x).shape == (2, 512 * 4)
        sq = FeatureExtractor(torchvision.models.squeezenet1_1().eval(), "penultimate", "avg")
        assert sq(x).shape == (2, 512)
