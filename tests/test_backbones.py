"""Backbone registry, weights resolution, offline behaviour, layers."""
from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from featcache.extraction.backbones import describe_all, get_backbone, list_backbones
from featcache.extraction.backbones.registry import register_backbone
from featcache.errors import UnknownNameError, WeightsError
from featcache.extraction.identity import resolve_identity
from featcache.extraction.layers import FeatureExtractor


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


# --------------------------------------------------------------------------- built as torchvision builds it


def _torchvision_pretrained_skeleton(monkeypatch, name, weights):
    """torchvision's own model for ``weights`` (meta device, nothing downloaded or loaded)."""
    from torchvision.models._api import WeightsEnum

    with monkeypatch.context() as m:
        m.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: {})
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=weights)


@pytest.mark.parametrize("name, weights", [
    ("googlenet", "DEFAULT"), ("inception_v3", "DEFAULT"), ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1"),
    ("vit_b_16", "IMAGENET1K_V1"), ("vit_h_14", "DEFAULT"), ("maxvit_t", "DEFAULT"), ("resnet18", "DEFAULT"),
])
def test_built_like_torchvision_builds_it_for_the_weights(monkeypatch, name, weights):
    from featcache.extraction.backbones.shapes import skeleton

    e = get_backbone(name)
    choice = e.resolve_weights(weights)
    ours = skeleton(e, choice)
    theirs = _torchvision_pretrained_skeleton(monkeypatch, name, choice.enum)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for attr in ("transform_input", "aux_logits", "image_size"):
        assert getattr(ours, attr, None) == getattr(theirs, attr, None), attr
    # none and a local file are built with the DEFAULT weights' settings
    assert e.build_kwargs(e.resolve_weights("none")) == e.build_kwargs(e.resolve_weights("DEFAULT"))


def test_vit_input_size_follows_the_weights():
    from featcache.extraction.backbones.shapes import skeleton

    e = get_backbone("vit_b_16")
    swag = e.resolve_weights("IMAGENET1K_SWAG_E2E_V1")
    assert swag.preprocess.crop == 384 and skeleton(e, swag).image_size == 384
    assert skeleton(e, e.resolve_weights("IMAGENET1K_V1")).image_size == 224
    h14 = get_backbone("vit_h_14")
    assert skeleton(h14, h14.resolve_weights("none")).image_size == h14.resolve_weights("none").preprocess.crop == 518


def test_build_settings_enter_the_identity_only_where_they_change_numbers():
    assert get_backbone("resnet18").resolve_weights("DEFAULT").digest == "sha256-prefix:f37072fd"  # keys unchanged
    assert get_backbone("vit_b_16").resolve_weights("DEFAULT").digest == "sha256-prefix:c867db91"
    g = get_backbone("googlenet").resolve_weights("none").digest
    assert "transform_input=True" in g
    ident, _, _ = resolve_identity("resnet18")
    assert set(ident.preprocess) == {"resize", "crop", "mean", "std", "interpolation", "antialias"}


def test_pretrained_googlenet_features_match_torchvision(tmp_path, monkeypatch):
    from torchvision.models._api import WeightsEnum

    torch.manual_seed(1)
    raw = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: raw)
    theirs = torchvision.models.googlenet(weights="DEFAULT").eval()  # transform_input, aux heads dropped
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "unused"))
    with_aux, without_aux = tmp_path / "raw.pth", tmp_path / "finished.pth"
    torch.save(raw, with_aux)  # the checkpoint file as downloaded (aux heads included)
    torch.save(theirs.state_dict(), without_aux)  # saved from torchvision's pretrained model (no aux heads)
    x = torch.randn(2, 3, 64, 64)
    e = get_backbone("googlenet")
    with torch.inference_mode():
        expected = theirs(x)
        for spec in ("DEFAULT", str(with_aux), str(without_aux)):
            ours = e.build(e.resolve_weights(spec))
            assert ours.transform_input and ours.aux1 is None and ours.aux2 is None
            torch.testing.assert_close(ours(x), expected)


# --------------------------------------------------------------------------- input sizes


def test_fixed_size_backbone_refuses_another_image_size_at_identity_time():
    with pytest.raises(WeightsError, match=r"vit_b_16.*--image-size 32.*224x224.*drop --image-size"):
        resolve_identity("vit_b_16", weights="none", image_size=32)
    with pytest.raises(WeightsError, match=r"vit_b_16 \(ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1\).*384"):
        resolve_identity("vit_b_16", weights="IMAGENET1K_SWAG_E2E_V1", image_size=224)
    assert resolve_identity("vit_b_16", weights="none", image_size=224)[0].preprocess["crop"] == 224
    assert resolve_identity("resnet18", weights="none", image_size=32)[0].preprocess["crop"] == 32


def test_size_a_network_cannot_take_is_found_without_a_hand_list():
    with pytest.raises(WeightsError, match=r"vgg16.*--image-size 16.*fails.*larger size"):
        resolve_identity("vgg16", weights="none", image_size=16)
    with pytest.raises(WeightsError, match=r"maxvit_t.*--image-size 256.*fails"):
        resolve_identity("maxvit_t", weights="none", image_size=256)
    assert resolve_identity("vgg16", weights="none", image_size=32)[0].preprocess["crop"] == 32


def test_image_size_has_an_upper_bound():
    with pytest.raises(WeightsError, match="too large; expected at most 4096"):
        resolve_identity("resnet18", weights="none", image_size=100000)


# --------------------------------------------------------------------------- weights names and files


def test_weights_of_another_backbone_are_refused():
    e = get_backbone("resnet18")
    with pytest.raises(WeightsError, match=r"ResNet50_Weights.*not weights of resnet18.*ResNet18_Weights.IMAGENET1K_V1"):
        e.resolve_weights("ResNet50_Weights.IMAGENET1K_V1")
    assert e.resolve_weights("ResNet18_Weights.IMAGENET1K_V1") == e.resolve_weights("IMAGENET1K_V1")
    lite = get_backbone("efficientnet_lite0")
    assert lite.resolve_weights("efficientnet_lite0.IMAGENET1K").label == "efficientnet_lite0.IMAGENET1K"
    with pytest.raises(UnknownNameError):
        lite.resolve_weights("ResNet18_Weights.IMAGENET1K")


def test_unreadable_weights_file_says_what_was_expected(tmp_path):
    e = get_backbone("resnet18")
    for content in (b"not a checkpoint", b"e" * 100, b""):
        bad = tmp_path / "bad.pth"
        bad.write_bytes(content)
        with pytest.raises(WeightsError, match=r"cannot read weights file .*\(\w+(Error|Exception)\b.*"
                                               r"expected a PyTorch state dict.*torch.save\(model.state_dict"):
            e.build(e.resolve_weights(str(bad)))
    whole = tmp_path / "whole.pth"
    torch.save(torch.nn.Linear(2, 2), whole)
    with pytest.raises(WeightsError, match="whole pickled model"):
        e.build(e.resolve_weights(str(whole)))


# --------------------------------------------------------------------------- layers


def test_layer_not_run_in_inference_is_a_clear_error():
    from featcache.errors import FeatcacheError

    m = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    ex = FeatureExtractor(m, layer="aux1")
    with torch.inference_mode(), pytest.raises(FeatcacheError, match=r"'aux1'.*never run.*inference.*'inception5b'.*'penultimate'"):
        ex(torch.randn(1, 3, 64, 64))
    with torch.inference_mode():  # the extractor still works afterwards
        assert FeatureExtractor(m, layer="inception4a")(torch.randn(1, 3, 64, 64)).shape == (1, 512)


# --------------------------------------------------------------------------- building with weights


def _no_meta(module) -> bool:
    return not any(t.is_meta for t in list(module.parameters()) + list(module.buffers()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_weights_are_loaded_into_a_module_built_without_initialising_it(tmp_path, monkeypatch, dtype):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "r18.pth"
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in reference.state_dict().items()}, path)
    e = get_backbone("resnet18")
    built = e.build(e.resolve_weights(str(path)))
    assert _no_meta(built) and {p.dtype for p in built.parameters()} == {torch.float32}
    expected = torchvision.models.resnet18().eval()
    expected.load_state_dict(torch.load(path))  # the old way: initialise, then copy the weights in
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(built(x), expected(x))


class _WithScratch(torch.nn.Module):
    """A constructor that makes a tensor the state dict does not hold (a non-persistent buffer)."""

    def __init__(self, **_build_kwargs):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.register_buffer("offset", torch.arange(3.0), persistent=False)

    def forward(self, x):
        return self.lin(x) + self.offset


def test_a_constructor_the_meta_build_cannot_serve_is_built_as_before(tmp_path):
    from dataclasses import replace

    from featcache.extraction.backbones.registry import WeightsChoice

    torch.manual_seed(0)
    state = _WithScratch().state_dict()
    path = tmp_path / "scratch.pth"
    torch.save(state, path)
    e = replace(get_backbone("resnet18"), name="scratch", builder=_WithScratch, finish=None, optional_state=())
    choice = WeightsChoice(label="file:scratch.pth", digest="d", preprocess=e.default_preprocess(), kind="file",
                           path=str(path))
    assert e._skeleton({}).offset.is_meta  # what a meta build would leave unfilled
    built = e.build(choice)
    assert _no_meta(built) and torch.equal(built.offset, torch.arange(3.0))
    torch.testing.assert_close(built.lin.weight, state["lin.weight"], rtol=0, atol=0)


def test_module_versions_travel_with_the_weights(tmp_path, monkeypatch):
    """MNASNet's loader reads the state dict's per-module versions (``_metadata``): a weights file,
    one saved from a DataParallel model ("module." prefixes) and torchvision's named weights load."""
    from torchvision.models._api import WeightsEnum

    torch.manual_seed(2)
    reference = torchvision.models.mnasnet0_5().eval()
    plain, wrapped = tmp_path / "m.pth", tmp_path / "dp.pth"
    torch.save(reference.state_dict(), plain)
    torch.save(torch.nn.DataParallel(reference).state_dict(), wrapped)
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: reference.state_dict())
    e = get_backbone("mnasnet0_5")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = reference(x)
        for spec in (str(plain), str(wrapped), "DEFAULT"):
            assert torch.equal(e.build(e.resolve_weights(spec))(x), expected), spec
