"""torchvision datasets as a data source (--data torchvision:NAME). Fake datasets in tmp_path, no network."""
from __future__ import annotations

import gzip
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.extraction.sources import load_manifest
from featcache.errors import DataError, UnknownNameError
from featcache.extraction.tvdata import DEBIAN_FASHION_MNIST, from_torchvision, link_debian_fashion_mnist, supported_datasets

N_TRAIN, N_TEST = 20, 10


@pytest.fixture(autouse=True)
def _private_prepared_cache(tmp_path, monkeypatch):
    """Linked/decompressed IDX files go to tmp, not ~/.cache; no TORCHVISION_DATA from the environment."""
    monkeypatch.setenv("FEATCACHE_TORCHVISION_CACHE", str(tmp_path / "tv-cache"))
    monkeypatch.delenv("TORCHVISION_DATA", raising=False)


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX ("SN3 Pascal Vincent") format: magic 0x0000 08 <ndim>, big-endian dims, uint8 data."""
    return struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def fake_mnist_arrays(seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        out[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        out[f"{prefix}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)
    return out


def write_idx(folder: Path, arrays: dict, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def mnist_root(tmp_path):
    """torchvision's own layout: <root>/MNIST/raw/<uncompressed IDX files>."""
    root = tmp_path / "tvdata"
    write_idx(root / "MNIST" / "raw", fake_mnist_arrays(0), gz=False)
    return root


@pytest.fixture
def flat_fashion(tmp_path):
    """The Debian package's layout: the four .gz IDX files directly in one folder."""
    return write_idx(tmp_path / "fashion-mnist", fake_mnist_arrays(1), gz=True)


def check_mnist_like(m, arrays, class_names):
    assert len(m) == N_TRAIN + N_TEST
    assert m.split == ["train"] * N_TRAIN + ["test"] * N_TEST
    assert m.ids[0] == "train/00000" and m.ids[N_TRAIN] == "test/00000" and m.paths == m.ids
    assert m.labels.dtype == np.int64
    assert m.labels.tolist() == [i % 10 for i in range(N_TRAIN)] + [i % 10 for i in range(N_TEST)]
    assert m.class_names == class_names
    img = m.reader.load(3)
    assert img.mode == "RGB" and img.size == (28, 28)
    rgb = np.asarray(img)
    assert (rgb[..., 0] == arrays["train-images-idx3-ubyte"][3]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    test_img = np.asarray(m.reader.load(N_TRAIN + 2))[..., 1]
    assert (test_img == arrays["t10k-images-idx3-ubyte"][2]).all()
    d1, d2 = m.reader.digests(None), m.reader.digests(None)
    assert d1 == d2 and len(set(d1)) == len(d1) and all(isinstance(d, str) and len(d) == 32 for d in d1)
    return d1


def test_mnist_in_torchvision_layout(mnist_root):
    import torchvision

    m = from_torchvision("MNIST", root=str(mnist_root))
    assert m.name == "mnist" and m.source == "torchvision:MNIST" and m.root == str(mnist_root.resolve())
    check_mnist_like(m, fake_mnist_arrays(0), torchvision.datasets.MNIST.classes)
    assert m.reader.tv_root == str(mnist_root.resolve())  # read in place, nothing copied


def test_fashion_mnist_from_a_flat_gzip_folder(flat_fashion, tmp_path):
    import torchvision

    m = from_torchvision("fashionmnist", root=str(flat_fashion))  # names are case-insensitive
    assert m.source == "torchvision:FashionMNIST" and m.root == str(flat_fashion)
    d = check_mnist_like(m, fake_mnist_arrays(1), torchvision.datasets.FashionMNIST.classes)
    raw = Path(m.reader.tv_root) / "FashionMNIST" / "raw"
    assert raw.is_relative_to(tmp_path / "tv-cache") and (raw / "train-images-idx3-ubyte").is_file()
    # the same pixels under the same dataset name are the same rows, whichever folder they come from
    torchvision_layout = write_idx(tmp_path / "other" / "FashionMNIST" / "raw", fake_mnist_arrays(1), gz=False)
    assert from_torchvision("FashionMNIST", root=str(torchvision_layout.parents[1])).reader.digests(None) == d
    # ... but the same pixels under another dataset name are other rows
    write_idx(tmp_path / "m" / "MNIST" / "raw", fake_mnist_arrays(1), gz=False)
    assert not set(d) & set(from_torchvision("MNIST", root=str(tmp_path / "m")).reader.digests(None))


def test_splits_and_shared_row_keys(mnist_root):
    everything = from_torchvision("MNIST", root=str(mnist_root))
    train = from_torchvision("MNIST", root=str(mnist_root), split="train")
    test = from_torchvision("MNIST", root=str(mnist_root), split="test")
    assert (train.name, test.name) == ("mnist-train", "mnist-test")
    assert len(train) == N_TRAIN and set(train.split) == {"train"} and train.ids == everything.ids[:N_TRAIN]
    assert len(test) == N_TEST and set(test.split) == {"test"} and test.ids[0] == "test/00000"
    assert train.reader.digests(None) + test.reader.digests(None) == everything.reader.digests(None)
    assert (np.asarray(test.reader.load(0)) == np.asarray(everything.reader.load(N_TRAIN))).all()
    with pytest.raises(UnknownNameError, match=r"'val'.*expected all \(train then test\), train or test"):
        from_torchvision("MNIST", root=str(mnist_root), split="val")


def test_reader_pickles_small_and_reloads_lazily(mnist_root):
    m = from_torchvision("MNIST", root=str(mnist_root))
    blob = pickle.dumps(m.reader)
    assert len(blob) < 10_000  # no images, no dataset object
    r = pickle.loads(blob)
    assert r._datasets == {}
    assert (np.asarray(r.load(5)) == np.asarray(m.reader.load(5))).all()
    assert r.digests(None) == m.reader.digests(None)


def test_extract_end_to_end_and_cache_hit(mnist_root, cache_dir):
    m = load_manifest("torchvision:MNIST", cache_dir=cache_dir, root=str(mnist_root), tv_split="all")
    r1 = featcache.extract(m, backbone="resnet18", weights="none", image_size=32, cache_dir=cache_dir,
                           workers=2, batch_size=8)  # forked DataLoader workers read the dataset
    assert (r1.rows, r1.dim, r1.extracted, r1.cache_hit) == (N_TRAIN + N_TEST, 512, N_TRAIN + N_TEST, False)
    m2 = load_manifest("torchvision:MNIST", cache_dir=cache_dir, root=str(mnist_root))
    r2 = featcache.extract(m2, backbone="resnet18", weights="none", image_size=32, cache_dir=cache_dir, workers=0)
    assert r2.cache_hit and not r2.model_built and r2.view == r1.view
    f = featcache.load_features(r1.view)
    assert f.features.shape == (N_TRAIN + N_TEST, 512) and np.isfinite(f.features).all()
    assert f.ids[:2] == ["train/00000", "train/00001"] and list(f.split).count("test") == N_TEST
    assert f.labels.tolist() == m.labels.tolist() and f.class_names == m.class_names
    assert f.attrs["data_source"] == "torchvision:MNIST"
    # the train split alone reuses every row: no model is built
    train = load_manifest("torchvision:MNIST", cache_dir=cache_dir, root=str(mnist_root), tv_split="train")
    r3 = featcache.extract(train, backbone="resnet18", weights="none", image_size=32, cache_dir=cache_dir,
                           workers=0)
    assert (r3.rows, r3.extracted, r3.model_built) == (N_TRAIN, 0, False)


def write_fake_cifar10(root: Path, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{k}", 4) for k in range(1, 6)] + [("test_batch", 6)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        batches[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return batches


def test_cifar10_with_md5_checks_monkeypatched(tmp_path, monkeypatch):
    """torchvision checks CIFAR files against the real md5s, which a fake cannot match: patched out here."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    batches = write_fake_cifar10(tmp_path / "c")
    m = from_torchvision("CIFAR10", root=str(tmp_path / "c"))
    assert len(m) == 26 and m.split == ["train"] * 20 + ["test"] * 6 and m.class_names[:2] == ["airplane", "automobile"]
    want_labels = sum((batches[f"data_batch_{k}"][1] for k in range(1, 6)), []) + batches["test_batch"][1]
    assert m.labels.tolist() == want_labels
    img = m.reader.load(20)  # first test image; CIFAR rows are CHW-planar in the batch files
    want = batches["test_batch"][0][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert img.mode == "RGB" and (np.asarray(img) == want).all()
    d = m.reader.digests(None)
    assert d == m.reader.digests(None) and len(set(d)) == 26


def test_unknown_and_denied_names():
    assert {"MNIST", "FashionMNIST", "KMNIST", "QMNIST", "EMNIST", "CIFAR10", "CIFAR100", "SVHN", "STL10",
            "USPS"} <= set(supported_datasets())
    assert not {"CelebA", "Cityscapes", "VOCSegmentation", "FakeData", "ImageFolder", "Kinetics"} & set(
        supported_datasets())
    with pytest.raises(UnknownNameError, match="did you mean 'FashionMNIST'"):
        from_torchvision("FashonMNIST", root="x")
    with pytest.raises(UnknownNameError, match="CelebA is not an image-classification dataset"):
        from_torchvision("CelebA", root="x")
    with pytest.raises(UnknownNameError, match="EMNIST variant.*'letter'.*did you mean 'letters'"):
        from_torchvision("EMNIST:letter", root="x")
    with pytest.raises(DataError, match="only EMNIST takes a variant"):
        from_torchvision("MNIST:digits", root="x")


def test_missing_files_name_the_expected_path(tmp_path):
    with pytest.raises(DataError) as e:
        from_torchvision("FashionMNIST", root=str(tmp_path / "empty"))
    msg = str(e.value)
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "--download" in msg and "dataset-fashion-mnist" in msg
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*--download"):
        from_torchvision("CIFAR10", root=str(tmp_path / "empty"))


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets as D

    def offline(self):
        raise URLError("no network here")

    monkeypatch.setattr(D.MNIST, "download", offline)
    with pytest.raises(DataError, match=r"downloading torchvision dataset MNIST .*no network here"):
        from_torchvision("MNIST", root=str(tmp_path / "dl"), download=True)


def test_emnist_variant(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {}
    for s, n in (("train", 6), ("test", 4)):
        arrays[f"emnist-letters-{s}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"emnist-letters-{s}-labels-idx1-ubyte"] = (np.arange(n) % 26 + 1).astype(np.uint8)
    write_idx(tmp_path / "e", arrays, gz=True)
    m = from_torchvision("EMNIST:letters", root=str(tmp_path / "e"), split="test")
    assert m.name == "emnist-letters-test" and m.source == "torchvision:EMNIST:letters" and len(m) == 4
    assert m.class_names[:3] == ["N/A", "a", "b"] and m.labels.tolist() == [1, 2, 3, 4]
    assert m.reader.load(0).mode == "RGB"


def test_qmnist_two_dimensional_labels(tmp_path):
    """QMNIST keeps 8 int32 fields per image (the class first) in an idx2-int file."""
    rng = np.random.default_rng(4)
    raw = tmp_path / "q" / "QMNIST" / "raw"
    raw.mkdir(parents=True)
    for s, n in (("train", 5), ("test", 3)):
        (raw / f"qmnist-{s}-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (n, 28, 28), np.uint8)))
        fields = np.zeros((n, 8), dtype=">i4")
        fields[:, 0] = np.arange(n) + 2
        header = struct.pack(">I", 0x0C02) + struct.pack(">2I", n, 8)
        (raw / f"qmnist-{s}-labels-idx2-int").write_bytes(header + fields.tobytes())
    m = from_torchvision("QMNIST", root=str(tmp_path / "q"))
    assert m.labels.tolist() == [2, 3, 4, 5, 6, 2, 3, 4] and len(m.class_names) == 10
    assert len(set(m.reader.digests(None))) == 8


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason=f"{DEBIAN_FASHION_MNIST} missing: `apt install dataset-fashion-mnist` (Debian/Ubuntu)")
def test_real_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch):
    t0 = time.perf_counter()
    m = from_torchvision("FashionMNIST", root=str(DEBIAN_FASHION_MNIST))
    t_open = time.perf_counter() - t0
    assert len(m) == 70_000 and m.split.count("train") == 60_000 and m.split.count("test") == 10_000
    assert len(m.class_names) == 10 and m.class_names[0] == "T-shirt/top"
    assert np.bincount(m.labels).tolist() == [7_000] * 10
    t0 = time.perf_counter()
    d = m.reader.digests(None)
    t_digest = time.perf_counter() - t0
    print(f"\nFashion-MNIST (70,000 images): manifest {t_open:.2f} s, digests {t_digest:.2f} s")
    assert t_digest < 30 and len(set(d)) == 70_000
    img = m.reader.load(69_999)
    assert img.mode == "RGB" and img.size == (28, 28)

    # the helper gives a root torchvision itself reads; without --root, the package is found by itself
    import torchvision

    root = link_debian_fashion_mnist(tmp_path / "linked")
    assert len(torchvision.datasets.FashionMNIST(str(root), train=False)) == 10_000
    monkeypatch.chdir(tmp_path)  # ./data (the default root) does not exist here
    m2 = from_torchvision("FashionMNIST", root=None, split="test")
    assert m2.root == str(DEBIAN_FASHION_MNIST) and m2.reader.digests(None) == d[60_000:]
