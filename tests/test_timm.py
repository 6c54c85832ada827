"""timm backbones: names, timm's preprocessing and penultimate features, offline weights, the key.

Tiny timm models (resnet10t, test_vit, test_convnext) with saved random weights; never the network.
"""
from __future__ import annotations

import csv
import io
import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featcache.cli import cli
from featcache.errors import FeatcacheError, UnknownNameError, WeightsError
from featcache.extraction.backbones import timm as timm_backbones
from featcache.extraction.backbones import describe_all, get_backbone, list_backbones
from featcache.extraction.backbones.registry import Preprocess
from featcache.extraction import identity
from featcache.extraction.identity import resolve_identity, spec_from_identity
from featcache.store.views import load_features

timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402  (installed with timm)
from timm.data import create_transform, resolve_data_config  # noqa: E402

FAMILIES = {"resnet10t": ".safetensors", "test_vit": ".pth", "test_convnext": ".safetensors"}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """An empty Hugging Face cache, offline: nothing may come from the network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def random_weights(arch: str, path, seed: int = 0):
    """A timm model with seeded random weights, saved as a state dict at ``path``; returns the model."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return model


def timm_features(model, paths, image_size: int | None = None) -> np.ndarray:
    """The reference: timm's own transform and forward_head(forward_features(x), pre_logits=True)."""
    extra = {"input_size": (3, image_size, image_size), "crop_pct": 1.0} if image_size else {}
    transform = create_transform(**resolve_data_config(extra, model=model))
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_extract_equals_a_direct_timm_forward(arch, image_folder, cache_dir, tmp_path):
    weights = tmp_path / f"{arch}{FAMILIES[arch]}"
    model = random_weights(arch, weights)
    r = invoke("extract", "--data", image_folder, "--backbone", f"timm:{arch}", "--weights", weights,
               "--workers", 0, "--cache", cache_dir, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["identity"]["source"] == f"timm=={timm.__version__}"
    assert doc["identity"]["backbone"] == get_backbone(f"timm:{arch}").name  # the default tag's name
    f = load_features(doc["view"])
    expected = timm_features(model, [image_folder / i for i in f.ids])
    assert f.features.shape == expected.shape
    assert cosines(np.asarray(f.features), expected).min() >= 0.9999


def test_preprocessing_is_timms_transform_for_center_and_squash_crops(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    for model in ("resnet10t.c3_in1k", "eva02_tiny_patch14_224.mim_in22k", "convnext_atto.d2_in1k"):
        cfg = timm.models.get_pretrained_cfg(model).to_dict()
        expected = create_transform(**resolve_data_config(pretrained_cfg=cfg))(img)
        pre = timm_backbones.timm_preprocess(model)
        assert pre.crop_mode == cfg["crop_mode"] and pre.interpolation == cfg["interpolation"]
        assert torch.allclose(pre.build()(img), expected, atol=1e-5)
    squash = Preprocess(resize=20, crop=16, mean=(0.5,) * 3, std=(0.5,) * 3, crop_mode="squash")
    assert squash.to_dict()["crop_mode"] == "squash" and "crop_mode" not in Preprocess(20, 16, (0,), (1,)).to_dict()


def test_names_listing_and_canonical_tags(cache_dir):
    names = set(list_backbones())
    assert {"timm:vit_small_patch14_dinov2.lvd142m", "timm:convnext_tiny.fb_in22k", "resnet18"} <= names
    assert get_backbone("timm:resnet10t").name == "timm:resnet10t.c3_in1k"
    assert get_backbone("timm:resnet10t.c3_in1k").weights_names() == ["c3_in1k"]
    with pytest.raises(UnknownNameError, match="expected one of: c3_in1k"):
        get_backbone("timm:resnet10t.bogus")
    with pytest.raises(UnknownNameError, match="did you mean"):
        get_backbone("timm:resnet10tt")
    with pytest.raises(UnknownNameError, match="did you mean 'timm:vit_small_patch14_dinov2.lvd142m'"):
        get_backbone("vit_small_patch14_dinov2")
    rows = {r["name"]: r for r in describe_all(cache_dir, source="timm", match="test_conv")}
    assert rows["timm:test_convnext.r160_in1k"]["dim"] == 64
    assert rows["timm:test_convnext.r160_in1k"]["cached"] is False
    assert all(r["source"] == "timm" for r in rows.values())
    r = invoke("backbones", "--source", "timm", "--filter", "test_vit*", "--cache", cache_dir)
    assert r.exit_code == 0 and "timm:test_vit.r160_in1k" in r.output and "resnet18" not in r.output


def test_every_dim_is_listed_without_building_models_when_the_list_is_long(cache_dir, monkeypatch):
    monkeypatch.setattr(timm_backbones.TimmEntry, "feature_dim", lambda self: pytest.fail("built a model"))
    rows = describe_all(cache_dir, source="timm")
    assert len(rows) > 1000 and all(r["name"].startswith("timm:") for r in rows)


def test_key_changes_with_the_file_the_image_size_and_the_timm_version(tmp_path, monkeypatch):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    random_weights("test_convnext", a, seed=0)
    random_weights("test_convnext", b, seed=1)
    key = {w: resolve_identity("timm:test_convnext", weights=str(w))[0].key for w in (a, b)}
    assert key[a] != key[b]
    small = resolve_identity("timm:test_convnext", weights=str(a), image_size=64)[0]
    assert small.key != key[a] and small.preprocess["crop"] == 64
    ident = resolve_identity("timm:test_convnext", weights=str(a))[0]
    assert ident.weights == "file:a.safetensors" and ident.weights_digest in ident.to_dict().values()
    monkeypatch.setattr(timm, "__version__", "99.0")
    monkeypatch.setattr(identity, "get_backbone", timm_backbones.timm_entry)
    timm_backbones.entry_for_model.cache_clear()
    try:
        assert resolve_identity("timm:test_convnext", weights=str(a))[0].key != key[a]
    finally:
        timm_backbones.entry_for_model.cache_clear()


def test_missing_weights_are_one_line_naming_the_model_file_and_fixes(tmp_path):
    with pytest.raises(WeightsError) as ei:
        resolve_identity("timm:resnet10t")
    msg = str(ei.value)
    assert "\n" not in msg and "timm:resnet10t.c3_in1k" in msg
    assert "models--timm--resnet10t.c3_in1k" in msg and "model.safetensors" in msg
    assert "hf download timm/resnet10t.c3_in1k" in msg and "--weights" in msg
    with pytest.raises(WeightsError, match="for backbone timm:test_vit.r160_in1k does not exist"):
        resolve_identity("timm:test_vit", weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(UnknownNameError, match="weights for timm:test_coatnet"):
        resolve_identity("timm:test_coatnet")  # no pretrained tag: none or a file


def test_weights_from_the_hugging_face_cache(tmp_path):
    from huggingface_hub import constants

    snapshot = tmp_path / "hf" / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    model = random_weights("test_vit", snapshot / "model.safetensors", seed=3)
    assert constants.HF_HUB_CACHE == str(tmp_path / "hf" / "hub")
    ident, entry, choice = resolve_identity("timm:test_vit.r160_in1k")
    assert choice.kind == "timm" and ident.weights == "test_vit.r160_in1k"
    assert ident.weights_digest.startswith("sha256:")
    built = entry.build(choice)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(built.forward_features(x), model.forward_features(x), atol=1e-5)
    assert describe_all(tmp_path, source="timm", match="test_vit.r160")[0]["cached"] is True
    assert resolve_identity(spec_from_identity(ident.to_dict()))[0].key == ident.key  # as predict does


def test_named_layer_and_random_init(image_folder, cache_dir):
    r = invoke("extract", "--data", image_folder, "--backbone", "timm:test_convnext", "--weights", "none",
               "--layer", "stages.1", "--image-size", 64, "--workers", 0, "--cache", cache_dir, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["dim"] == timm.create_model("test_convnext").feature_info[1]["num_chs"]
    assert doc["identity"]["weights_digest"].startswith("random-init:seed=0")


def test_end_to_end_extract_hit_fit_head_predict(image_folder, cache_dir, tmp_path):
    weights = tmp_path / "w.safetensors"
    random_weights("resnet10t", weights)
    args = ["--data", image_folder, "--backbone", "timm:resnet10t", "--weights", weights, "--image-size", 64,
            "--workers", 0, "--cache", cache_dir]
    first = json.loads(invoke("extract", *args, "--json").stdout)
    again = json.loads(invoke("extract", *args, "--json").stdout)
    assert again["cache_hit"] and not again["model_built"] and again["feature_key"] == first["feature_key"]
    r = invoke("fit-head", "--features", first["view"], "--head", "logreg", "--cache", cache_dir, "--json")
    assert r.exit_code == 0, r.output
    fit = json.loads(r.stdout)
    assert fit["feature_key"] == first["feature_key"]
    new = tmp_path / "new" / "x"
    new.mkdir(parents=True)
    Image.open(next(image_folder.glob("cat/*.png"))).save(new / "a.png")
    p = invoke("predict", "--head", fit["head_path"], "--data", new.parent, "--cache", cache_dir)
    assert p.exit_code == 0, p.output
    assert [row["path"] for row in csv.DictReader(io.StringIO(p.stdout))] == ["x/a.png"]


def test_without_timm_names_give_one_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(FeatcacheError, match=r"pip install 'featcache\[timm\]'") as ei:
        timm_backbones.timm_entry("timm:some_model_never_asked_for")
    assert "'timm:some_model_never_asked_for'" in str(ei.value) and "\n" not in str(ei.value)
    r = invoke("extract", "--data", "builtin:digits", "--backbone", "timm:convnext_atto")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "pip install 'featcache[timm]'" in r.output
    r = invoke("backbones", "--source", "timm")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "pip install 'featcache[timm]'" in r.output


@pytest.mark.slow
def test_pipeline_with_a_timm_backbone_and_a_weights_file(image_folder, tmp_path):
    from featcache.pipeline.runner import run_pipeline

    random_weights("test_vit", tmp_path / "vit.safetensors")
    toml = tmp_path / "p.toml"
    toml.write_text(f'name = "t"\n[data]\nsource = "{image_folder}"\n[extract]\nworkers = 0\n'
                    '[[backbones]]\nname = "timm:test_vit"\nweights = "vit.safetensors"\n'
                    '[[backbones]]\nlabel = "convnext-stage1"\nname = "timm:test_convnext"\nweights = "none"\n'
                    'layer = "stages.1"\nimage_size = 64\n[[heads]]\nname = "logreg"\n')
    first = run_pipeline(toml, cache_dir=tmp_path / "cache", n_jobs=1)
    assert [b.label for b in first.backbones] == ["timm-test_vit", "convnext-stage1"]
    assert [b.dim for b in first.backbones] == [64, 32] and len(first.results) == 2
    again = run_pipeline(toml, cache_dir=tmp_path / "cache", n_jobs=1)
    assert all(b.cache_hit and b.extracted == 0 for b in again.backbones)


# crash safety and torchrun with a timm model, as tests/test_reliability.py and test_distributed.py do
# for torchvision: real child processes
TIMM_ARGS = ["--backbone", "timm:test_convnext", "--weights", "none", "--image-size", "32", "--batch-size", "4",
             "--flush-rows", "4", "--workers", "0", "--json", "-q"]


def child(cmd: list, failpoint: str = "", **env):
    import os
    import subprocess

    env = {**os.environ, "FEATCACHE_FAILPOINT": failpoint, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def twenty(tmp_path):
    from conftest import make_image

    root = tmp_path / "data"
    for i in range(20):
        make_image(root / f"c{i % 2}" / f"{i:03d}.png", seed=900 + i, size=(24, 24))
    return root


@pytest.mark.slow
def test_kill_resume_and_growth_with_a_timm_backbone(twenty, tmp_path):
    import featcache
    from conftest import make_image

    extract = [sys.executable, "-m", "featcache", "extract", "--data", twenty, "--cache", tmp_path / "c", *TIMM_ARGS]
    killed = child(extract, failpoint="after-flush:2")
    assert killed.returncode != 0
    resumed = json.loads(child(extract).stdout)
    assert resumed["extracted"] == 20 - 8 and resumed["reused"] == 8
    ref = featcache.extract(str(twenty), backbone="timm:test_convnext", weights="none", image_size=32,
                            batch_size=4, workers=0, cache_dir=tmp_path / "ref")
    assert ref.feature_key == resumed["feature_key"]
    np.testing.assert_array_equal(featcache.load_features(resumed["view"]).features,
                                  featcache.load_features(ref.view).features)
    make_image(twenty / "c0" / "new.png", seed=1, size=(24, 24))
    grown = json.loads(child(extract).stdout)
    assert (grown["extracted"], grown["reused"]) == (1, 20)


@pytest.mark.slow
def test_torchrun_two_ranks_with_a_timm_backbone(twenty, tmp_path):
    import featcache

    torchrun = __import__("pathlib").Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    r = child([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "featcache", "extract", "--data", twenty,
               "--cache", tmp_path / "dist", *TIMM_ARGS])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    one = json.loads(child([sys.executable, "-m", "featcache", "extract", "--data", twenty, "--cache",
                            tmp_path / "one", *TIMM_ARGS]).stdout)
    assert doc["feature_key"] == one["feature_key"] and doc["extracted"] == 20
    np.testing.assert_array_equal(featcache.load_features(doc["view"]).features,
                                  featcache.load_features(one["view"]).features)


def test_keys_of_timm_features_name_folders_and_views(image_folder, cache_dir):
    r = invoke("extract", "--data", image_folder, "--backbone", "timm:test_vit", "--weights", "none",
               "--workers", 0, "--cache", cache_dir, "--json")
    doc = json.loads(r.stdout)
    assert doc["feature_key"].startswith("timm-test_vit.r160_in1k-") and ":" not in doc["feature_key"]
    for ref in ("timm-test_vit", f"{doc['feature_key']}:pets"):  # a key prefix, and KEY:DATA
        assert load_features(ref, cache_dir=cache_dir).path == doc["view"]


@pytest.mark.filterwarnings("ignore:--precision bfloat16:RuntimeWarning")  # tests/test_levers.py tests it
def test_autocast_precision_with_a_timm_backbone(image_folder, cache_dir):
    import featcache

    kw = dict(backbone="timm:test_convnext", weights="none", image_size=64, workers=0, cache_dir=cache_dir)
    full = featcache.extract(str(image_folder), precision="float32", **kw)
    half = featcache.extract(str(image_folder), precision="bfloat16", **kw)  # AMP (autocast) on the CPU
    assert full.feature_key != half.feature_key
    a, b = featcache.load_features(full.view), featcache.load_features(half.view)
    assert a.ids == b.ids and cosines(a.features, b.features).min() > 0.99


def test_one_size_vits_refuse_another_image_size_clearly():
    with pytest.raises(WeightsError, match="built for 518x518 px input only. Fix: drop --image-size"):
        resolve_identity("timm:vit_small_patch14_dinov2.lvd142m", weights="none", image_size=224)
    assert resolve_identity("timm:test_vit", weights="none", image_size=64)[0].preprocess["crop"] == 64


def test_a_fine_tuned_file_with_another_class_count_loads(image_folder, cache_dir, tmp_path):
    torch.manual_seed(0)
    tuned = timm.create_model("test_convnext", num_classes=3).eval()
    save_file({k: v.contiguous() for k, v in tuned.state_dict().items()}, str(tmp_path / "tuned.safetensors"))
    ident, entry, choice = resolve_identity("timm:test_convnext", weights=str(tmp_path / "tuned.safetensors"))
    assert ident.weights_digest.endswith(";build:num_classes=3")
    r = invoke("extract", "--data", image_folder, "--backbone", "timm:test_convnext", "--weights",
               tmp_path / "tuned.safetensors", "--workers", 0, "--cache", cache_dir, "--json")
    assert r.exit_code == 0, r.output
    f = load_features(json.loads(r.stdout)["view"])
    assert cosines(np.asarray(f.features), timm_features(tuned, [image_folder / i for i in f.ids])).min() >= 0.9999
