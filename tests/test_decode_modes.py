"""--decode draft (PIL at a reduced DCT scale) and --decode device (torchvision.io on the extraction
device, CPU here): each close to the default PIL decoding, under a feature key of its own."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import featcache
from featcache.cli import cli
from featcache.extraction.device_decode import decode_jpegs
from featcache.extraction.engine import ident_transform
from featcache.extraction.identity import resolve_identity, spec_from_identity
from featcache.errors import ImageDecodeError
from featcache.extraction.images import ImageTooLarge, RawJpeg, decode_image, jpeg_bytes
from featcache.extraction.decoders import DECODER_VERSION, DECODERS

from test_extract import resnet_pre_fc, seeded_model

KW = dict(backbone="resnet18", weights="none", image_size=48, workers=0, batch_size=4)


def smooth_jpeg(path, seed, size=(90, 70), **save):
    """A photo-like JPEG (smooth gradient plus noise)."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    ramp = np.add.outer(np.linspace(0, 1, h), np.linspace(0, 1, w))[..., None] / 2
    arr = (ramp * rng.uniform(60, 255, 3) + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=90, **save)
    return path


@pytest.fixture
def jpeg_folder(tmp_path):
    root = tmp_path / "photos"
    for i in range(10):
        smooth_jpeg(root / ("car" if i % 2 else "van") / f"{i}.jpg", seed=i)
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(root / "van" / "flat.png")  # not a JPEG
    Image.fromarray(np.full((32, 32), 128, np.uint8), "L").save(root / "car" / "gray.jpg")  # grayscale JPEG
    return root


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_device_decode_is_close_to_pil_under_its_own_key(jpeg_folder, tmp_path):
    cache = tmp_path / "cache"
    pil = featcache.extract(str(jpeg_folder), cache_dir=cache, **KW)
    dev = featcache.extract(str(jpeg_folder), cache_dir=cache, decode="device", **KW)
    assert dev.feature_key != pil.feature_key
    assert dev.identity["decoder"] == DECODERS["device"] and pil.identity["decoder"] == DECODER_VERSION
    assert (dev.rows, dev.extracted, dev.skipped) == (12, 12, [])
    a, b = featcache.load_features(pil.view), featcache.load_features(dev.view)
    assert a.ids == b.ids and a.labels.tolist() == b.labels.tolist()
    assert cosine(a.features, b.features).min() > 0.999  # same images, decoder rounding apart
    png = a.ids.index("van/flat.png")  # decoded by PIL in the workers either way
    np.testing.assert_array_equal(a.features[png], b.features[png])
    jpg = a.ids.index("van/0.jpg")
    assert not np.array_equal(a.features[jpg], b.features[jpg])  # really decoded elsewhere
    assert "device_decode_s" in dev.timings and "of JPEG on cpu" in dev.summary()
    again = featcache.extract(str(jpeg_folder), cache_dir=cache, decode="device", **KW)
    assert again.cache_hit and again.view == dev.view


def test_device_decode_equals_decode_jpeg_then_the_same_preprocessing_by_hand(jpeg_folder, tmp_path):
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import functional as F

    r = featcache.extract(str(jpeg_folder), cache_dir=tmp_path / "c", decode="device", **KW)
    f = featcache.load_features(r.view)
    ids = ["car/1.jpg", "car/gray.jpg", "van/4.jpg"]
    data = [torch.frombuffer(bytearray((jpeg_folder / i).read_bytes()), dtype=torch.uint8) for i in ids]
    with pytest.warns(Warning):  # torchvision 0.29 deprecates its codecs; featcache silences that
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB)

    def t(x):  # the weights' preset on a uint8 tensor (v2's uint8 resize kernel rounds differently)
        x = F.center_crop(F.resize(x, [48], antialias=True), [48])
        return F.normalize(F.convert_image_dtype(x, torch.float32), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.inference_mode():
        want = resnet_pre_fc(seeded_model("resnet18"), torch.stack([t(x) for x in decoded])).numpy()
    got = f.features[[f.ids.index(i) for i in ids]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # a batch of 3 vs 4: kernel rounding only


def test_cmyk_and_rotated_jpegs_are_left_to_pil(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 20), (10, 200, 30, 0)).save(cmyk, "JPEG")
    rotated = smooth_jpeg(tmp_path / "rot.jpg", seed=3, exif=_exif_orientation(6))
    plain = smooth_jpeg(tmp_path / "plain.jpg", seed=3)
    png = tmp_path / "p.png"
    Image.new("RGB", (5, 5)).save(png)
    assert jpeg_bytes(str(cmyk)) is None  # nvJPEG does not take CMYK
    assert jpeg_bytes(str(rotated)) is None  # nor apply EXIF orientation
    assert jpeg_bytes(str(png)) is None
    assert jpeg_bytes(str(plain)) == plain.read_bytes()


def test_rotated_jpeg_gets_the_same_features_on_both_paths(tmp_path):
    root = tmp_path / "d"
    smooth_jpeg(root / "a" / "rot.jpg", seed=5, exif=_exif_orientation(6))
    a = featcache.load_features(featcache.extract(str(root), cache_dir=tmp_path / "c", **KW).view)
    b = featcache.load_features(featcache.extract(str(root), cache_dir=tmp_path / "c", decode="device", **KW).view)
    np.testing.assert_array_equal(a.features, b.features)  # PIL applied the rotation in both


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_pixel_limit_applies_before_decoding(tmp_path):
    big = smooth_jpeg(tmp_path / "big.jpg", seed=1, size=(200, 100))
    with pytest.raises(ImageTooLarge, match="20000 = 0 megapixels|above the"):
        jpeg_bytes(str(big), max_pixels=10_000)


def test_a_corrupt_jpeg_follows_the_on_error_policy(jpeg_folder, tmp_path):
    good = (jpeg_folder / "car" / "1.jpg").read_bytes()
    (jpeg_folder / "car" / "broken.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageDecodeError, match=r"car/broken\.jpg.*truncated.*--on-error skip"):
        featcache.extract(str(jpeg_folder), cache_dir=tmp_path / "c", decode="device", **KW)
    r = featcache.extract(str(jpeg_folder), cache_dir=tmp_path / "c", decode="device", on_error="skip", **KW)
    assert [s["id"] for s in r.skipped] == ["car/broken.jpg"] and "truncated" in r.skipped[0]["error"]
    assert r.rows == 12


def test_one_bad_file_does_not_fail_its_batch(jpeg_folder):
    good = (jpeg_folder / "car" / "1.jpg").read_bytes()
    raws = [(0, RawJpeg(good)), (1, RawJpeg(good[:300] + b"\0" * 50)), (2, RawJpeg(good))]
    t = ident_transform(resolve_identity("resnet18", weights="none", image_size=48, decode="device")[0])
    pos, images, bad = decode_jpegs(raws, t, torch.device("cpu"))
    assert pos.tolist() == [0, 2] and images.shape == (2, 3, 48, 48)
    assert [p for p, _ in bad] == [1]
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=0)


def test_predict_extracts_with_the_heads_decoder(jpeg_folder, tmp_path):
    r = featcache.extract(str(jpeg_folder), cache_dir=tmp_path / "c", decode="device", **KW)
    spec = spec_from_identity(r.identity)
    assert spec.decode == "device"
    assert resolve_identity(spec)[0].key == r.feature_key
    assert spec_from_identity(featcache.extract(str(jpeg_folder), cache_dir=tmp_path / "c",
                                                **KW).identity).decode == "workers"


def test_cli_option_and_its_error(jpeg_folder, tmp_path):
    args = ["extract", "--data", str(jpeg_folder), "--cache", str(tmp_path / "c"), "--backbone", "resnet18",
            "--weights", "none", "--image-size", "48", "--workers", "0"]
    ok = CliRunner().invoke(cli, [*args, "--decode", "device", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["identity"]["decoder"] == DECODERS["device"]
    bad = CliRunner().invoke(cli, [*args, "--decode", "gpu"])
    assert bad.exit_code == 2 and "'gpu' is not one of 'workers', 'draft', 'device'" in bad.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_nvjpeg_is_close_to_the_cpu_decoder(jpeg_folder, tmp_path):
    kw = {**KW, "precision": "float32"}
    cpu = featcache.extract(str(jpeg_folder), cache_dir=tmp_path / "c", decode="device", device="cpu", **kw)
    gpu = featcache.extract(str(jpeg_folder), cache_dir=tmp_path / "g", decode="device", device="cuda", **kw)
    assert gpu.feature_key == cpu.feature_key  # one key on both devices, as for the forward pass
    a, b = featcache.load_features(cpu.view), featcache.load_features(gpu.view)
    assert cosine(a.features, b.features).min() > 0.999


def test_draft_decodes_large_jpegs_at_a_reduced_scale(tmp_path):
    big = smooth_jpeg(tmp_path / "big.jpg", seed=2, size=(640, 480))
    assert decode_image(str(big)).size == (640, 480)
    assert decode_image(str(big), draft=48).size == (80, 60)  # 1/8: the shorter side stays >= 48
    assert decode_image(str(big), draft=100).size == (160, 120)  # 1/4
    assert decode_image(str(big), draft=480).size == (640, 480)  # no smaller scale keeps 480 px
    small = smooth_jpeg(tmp_path / "small.jpg", seed=2)
    assert np.array_equal(np.asarray(decode_image(str(small), draft=48)), np.asarray(decode_image(str(small))))
    png = tmp_path / "p.png"
    Image.new("RGB", (640, 480), (1, 2, 3)).save(png)
    assert decode_image(str(png), draft=48).size == (640, 480)  # JPEG only
    rotated = smooth_jpeg(tmp_path / "rot.jpg", seed=2, size=(640, 480), exif=_exif_orientation(6))
    assert decode_image(str(rotated), draft=48).size == (60, 80)  # scaled, then turned upright
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (640, 480), (10, 200, 30, 0)).save(cmyk, "JPEG")
    img = decode_image(str(cmyk), draft=48)
    assert img.mode == "RGB" and img.size == (80, 60)


def test_draft_features_are_close_under_their_own_key(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        smooth_jpeg(root / ("a" if i % 2 else "b") / f"{i}.jpg", seed=i, size=(400, 300))
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(root / "a" / "flat.png")
    cache = tmp_path / "cache"
    full = featcache.extract(str(root), cache_dir=cache, **KW)
    draft = featcache.extract(str(root), cache_dir=cache, decode="draft", **KW)
    assert draft.feature_key != full.feature_key and draft.identity["decoder"] == DECODERS["draft"]
    a, b = featcache.load_features(full.view), featcache.load_features(draft.view)
    assert a.ids == b.ids
    assert cosine(a.features, b.features).min() > 0.99
    png = a.ids.index("a/flat.png")
    np.testing.assert_array_equal(a.features[png], b.features[png])
    assert not np.array_equal(a.features[0], b.features[0])
    assert spec_from_identity(draft.identity).decode == "draft"
    assert featcache.extract(str(root), cache_dir=cache, decode="draft", **KW).cache_hit
