"""torchvision image-classification datasets as a data source: ``--data torchvision:NAME``.

Reads a dataset that is already on disk in torchvision's own layout (or fetches
it with ``download=True``) and turns it into a :class:`~featcache.extraction.manifest.Manifest`
whose rows are the dataset's images in their official order: the train split,
then the test split (``split="all"``), or one of them. No image files are
written: the manifest's reader indexes the dataset object, in DataLoader
workers too.

Supported: every class in ``torchvision.datasets.__all__`` whose constructor
takes ``train: bool`` or ``split: str`` plus a ``target_transform`` (that is,
an (image, label) dataset), less a short deny list of detection, segmentation
and pair datasets. EMNIST takes a variant: ``EMNIST`` means ``EMNIST:balanced``,
``EMNIST:letters`` etc. pick another.

Row identity (the store's row key) is the dataset name, its own split and the
index within that split plus a BLAKE2b-128 digest of the pixels, so ``all`` and
``train`` share rows, and the same dataset read from another folder (a download,
or Debian's ``dataset-fashion-mnist`` package) hits the same rows.

MNIST-style datasets (MNIST, FashionMNIST, KMNIST, QMNIST, EMNIST) are also
read from a folder that holds the original IDX files directly, gzipped or not
(e.g. ``/usr/share/datasets/fashion-mnist``): torchvision wants them
uncompressed in ``<root>/<Name>/raw``, so they are linked (plain files) or
decompressed (``.gz``) once into a cache folder, ``$FEATCACHE_TORCHVISION_CACHE``
or ``~/.cache/featcache/torchvision``.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featcache.extraction.imagefiles import to_rgb
from featcache.extraction.manifest import Manifest, slug
from featcache.store.digests import DIGEST_SIZE, digest_file
from featcache.errors import DataError, UnknownNameError

TV_SPLITS = ("all", "train", "test")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt package dataset-fashion-mnist
EMNIST_DEFAULT_VARIANT = "balanced"  # the variant the EMNIST paper recommends for benchmarks (47 classes)

# Their constructor takes train/split and a target_transform, but a row is not (one image, one class label).
DENIED = {
    "Cityscapes": "semantic segmentation",
    "CelebA": "multi-label attributes and identities, not one class per image",
    "WIDERFace": "face detection",
    "Kitti": "object detection",
    "LFWPairs": "image pairs (face verification); use LFWPeople",
}
# The dataset's own (training, held-out) split names where they are not ("train", "test"); a held-out split
# named "val" is stored as "val" in the view's split column.
OWN_SPLITS = {
    "OxfordIIITPet": ("trainval", "test"),
    "FGVCAircraft": ("trainval", "test"),  # the official protocol trains on train+val
    "ImageNet": ("train", "val"),
    "Imagenette": ("train", "val"),
    "Places365": ("train-standard", "val"),  # its test split has no labels
    "CLEVRClassification": ("train", "val"),  # its test split has no labels
}


def _datasets_module():
    import torchvision.datasets

    return torchvision.datasets


@functools.lru_cache(maxsize=1)
def supported_datasets() -> dict[str, str]:
    """Class name -> how its split is chosen: ``"train"`` (a bool), ``"split"`` (a str) or ``"emnist"``."""
    D = _datasets_module()
    out: dict[str, str] = {}
    for name in D.__all__:
        cls = getattr(D, name, None)
        if not isinstance(cls, type) or name in DENIED:
            continue
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            continue
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if "target_transform" not in params and not var_kw:
            continue  # no (image, label) rows: flow, stereo, video, patch matching
        train, split = params.get("train"), params.get("split")
        if name == "EMNIST":  # `split` is its variant; train/test is a `train` keyword
            out[name] = "emnist"
        elif train is not None and isinstance(train.default, bool):
            out[name] = "train"
        elif split is not None and isinstance(split.default, str):
            out[name] = "split"
    return out


@dataclass(frozen=True)
class _Spec:
    cls_name: str
    kind: str  # "train" | "split" | "emnist"
    variant: str = ""  # EMNIST only

    @property
    def cls(self):
        return getattr(_datasets_module(), self.cls_name)

    @property
    def key_name(self) -> str:  # in row keys and manifest names
        return f"{self.cls_name}-{self.variant}" if self.variant else self.cls_name

    @property
    def display(self) -> str:  # as the user writes it after "torchvision:"
        return self.cls_name + (f":{self.variant}" if self.variant else "")

    @property
    def source(self) -> str:
        return f"torchvision:{self.display}"

    def own_split(self, side: str) -> str:
        """The dataset's own name of the "train" or "test" side."""
        own = OWN_SPLITS.get(self.cls_name, ("train", "test"))
        return own[0] if side == "train" else own[1]

    def column(self, side: str) -> str:
        """What the view's split column holds for this side."""
        return "train" if side == "train" else ("val" if self.own_split("test") in ("val", "valid") else "test")

    def kwargs(self, side: str) -> dict:
        if self.kind == "train":
            return {"train": side == "train"}
        if self.kind == "emnist":
            return {"split": self.variant, "train": side == "train"}
        return {"split": self.own_split(side)}

    @property
    def takes_download(self) -> bool:
        return "download" in inspect.signature(self.cls).parameters or self.kind == "emnist"

    @property
    def is_mnist_family(self) -> bool:
        return issubclass(self.cls, _datasets_module().MNIST)


def _parse_name(name: str) -> _Spec:
    base, _, variant = name.strip().partition(":")
    supported = supported_datasets()
    by_lower = {k.lower(): k for k in supported}
    cls_name = by_lower.get(base.lower())
    if cls_name is None:
        denied = {k.lower(): k for k in DENIED}.get(base.lower())
        hint = (f"{denied} is not an image-classification dataset: {DENIED[denied]}" if denied else
                "torchvision image-classification datasets whose constructor takes train= or split=")
        raise UnknownNameError("torchvision dataset", base, sorted(supported), hint=hint)
    kind = supported[cls_name]
    if kind == "emnist":
        variants = list(getattr(_datasets_module().EMNIST, "splits", ()))
        variant = variant or EMNIST_DEFAULT_VARIANT
        if variant not in variants:
            raise UnknownNameError("EMNIST variant (torchvision:EMNIST:VARIANT)", variant, variants)
    elif variant:
        raise DataError(f"torchvision:{name}: only EMNIST takes a variant after a second ':'; "
                        f"use torchvision:{cls_name}")
    return _Spec(cls_name, kind, variant)


# ---------------------------------------------------------------------------------------------- IDX files


def _idx_files(spec: _Spec, sides: list[str]) -> list[str]:
    """Uncompressed file names torchvision checks for in ``<root>/<Name>/raw``."""
    cls = spec.cls
    if spec.kind == "emnist":
        return [f"emnist-{spec.variant}-{s}-{k}-idx{n}-ubyte" for s in sides for k, n in (("images", 3), ("labels", 1))]
    res = cls.resources
    if isinstance(res, dict):  # QMNIST: {"train": [(url, md5), (url, md5)], "test": [...], ...}
        return [os.path.splitext(os.path.basename(url))[0] for s in sides for url, _ in res[s]]
    # MNIST, FashionMNIST, KMNIST: torchvision checks all four files whatever `train` is
    return [os.path.splitext(os.path.basename(url))[0] for url, _ in res]


def _locate_idx(spec: _Spec, root: Path, files: list[str]) -> tuple[str, dict[str, Path]]:
    """("ready", {}) when torchvision reads ``root`` as it is; ("flat", {name: source}) when every file was
    found, maybe gzipped, in ``root/<Name>/raw``, ``root/<Name>`` or ``root``; ("missing", {}) otherwise."""
    raw = root / spec.cls_name / "raw"
    processed = root / spec.cls_name / "processed"
    if all((raw / f).is_file() for f in files):
        return "ready", {}
    if isinstance(spec.cls.resources, list) and all((processed / f).is_file() for f in ("training.pt", "test.pt")):
        return "ready", {}  # torchvision's legacy layout
    found: dict[str, Path] = {}
    for f in files:
        for d in (raw, root / spec.cls_name, root):
            hit = next((d / c for c in (f, f + ".gz") if (d / c).is_file()), None)
            if hit is not None:
                found[f] = hit
                break
        else:
            return "missing", {}
    return "flat", found


def prepared_cache() -> Path:
    """Where IDX files found outside torchvision's layout are linked or decompressed."""
    env = os.environ.get("FEATCACHE_TORCHVISION_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "featcache" / "torchvision"


def _prepare_idx(cls_name: str, sources: dict[str, Path], dest_root: Path) -> Path:
    """Build ``dest_root/<cls_name>/raw`` from ``sources`` (plain files linked, .gz decompressed); returns
    ``dest_root``. Files whose source (path, size, mtime) is unchanged are kept."""
    raw = dest_root / cls_name / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
        stamp_path = raw / ".featcache-sources.json"
        try:
            stamps = json.loads(stamp_path.read_text())
        except (OSError, ValueError):
            stamps = {}
        changed = False
        for name, src in sources.items():
            src = src.resolve()
            st = src.stat()
            stamp = [str(src), st.st_size, st.st_mtime_ns]
            target = raw / name
            if stamps.get(name) == stamp and target.is_file():
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=raw)
            os.close(fd)
            try:
                if src.name.endswith(".gz"):
                    with gzip.open(src, "rb") as fi, open(tmp, "wb") as fo:
                        shutil.copyfileobj(fi, fo, 1 << 20)
                else:
                    os.unlink(tmp)
                    os.symlink(src, tmp)
                os.replace(tmp, target)
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
            stamps[name], changed = stamp, True
        if changed:
            tmp = stamp_path.with_name(stamp_path.name + f".{os.getpid()}")
            tmp.write_text(json.dumps(stamps, indent=1))
            os.replace(tmp, stamp_path)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot prepare {cls_name} files under {str(raw)!r} ({type(e).__name__}: {e}); "
                        "set FEATCACHE_TORCHVISION_CACHE to a writable folder, or check the source files") from None
    return dest_root


def _prepared_root_for(source: Path) -> Path:
    digest = hashlib.sha256(str(source).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return prepared_cache() / f"{slug(source.name)}-{digest}"


def link_debian_fashion_mnist(dest: str | os.PathLike | None = None) -> Path:
    """A torchvision root for the Fashion-MNIST of Debian's ``dataset-fashion-mnist`` package.

    ``dest/FashionMNIST/raw`` (default: a folder in :func:`prepared_cache`) gets the four IDX files,
    decompressed; returns ``dest``, so ``torchvision.datasets.FashionMNIST(link_debian_fashion_mnist())``
    works. ``featcache extract --data torchvision:FashionMNIST --root /usr/share/datasets/fashion-mnist``
    does this by itself.
    """
    spec = _Spec("FashionMNIST", "train")
    files = _idx_files(spec, ["train", "test"])
    state, sources = _locate_idx(spec, DEBIAN_FASHION_MNIST, files)
    if state == "missing":
        raise DataError(f"Fashion-MNIST IDX files not found in {str(DEBIAN_FASHION_MNIST)!r}; install them with "
                        "`apt install dataset-fashion-mnist` (Debian/Ubuntu)")
    if state == "ready":
        return DEBIAN_FASHION_MNIST
    dest = Path(dest).expanduser().resolve() if dest else _prepared_root_for(DEBIAN_FASHION_MNIST.resolve())
    return _prepare_idx(spec.cls_name, sources, dest)


# ---------------------------------------------------------------------------------------------- opening


def _expected_where(spec: _Spec, root: Path) -> str:
    """Where torchvision looks for the files of ``spec`` under ``root``, in words."""
    cls = spec.cls
    if spec.is_mnist_family:
        files = _idx_files(spec, ["train", "test"])
        return (f"{root / spec.cls_name / 'raw' / files[0]} (and {', '.join(files[1:])} in the same folder; "
                f"the same files gzipped (.gz), or directly in {str(root)!r}, are read too)")
    if getattr(cls, "base_folder", None):
        names = [f[0] for f in list(getattr(cls, "train_list", [])) + list(getattr(cls, "test_list", []))]
        return f"{root / cls.base_folder}" + (f" ({', '.join(names[:8])})" if names else "")
    if isinstance(getattr(cls, "split_list", None), dict):
        return ", ".join(str(root / v[1]) for v in cls.split_list.values() if len(v) > 1)
    return f"{root} (in torchvision's layout for {spec.cls_name})"


def _missing_message(spec: _Spec, root: Path, detail: str = "") -> str:
    msg = f"torchvision dataset {spec.display} not found: torchvision looks for {_expected_where(spec, root)}"
    if detail:
        msg += f"; it says: {detail}"
    if spec.takes_download:
        msg += f". Pass --download to fetch it into {str(root)!r} (needs network access), or set --root to the "
    else:
        msg += (f". torchvision cannot download {spec.cls_name}: fetch it by hand as its documentation says, "
                "then set --root to the ")
    msg += "folder that holds it"
    if spec.cls_name == "FashionMNIST":
        msg += (f"; on Debian/Ubuntu `apt install dataset-fashion-mnist` puts it in {DEBIAN_FASHION_MNIST} "
                f"(--root {DEBIAN_FASHION_MNIST})")
    return msg


def _construct(spec: _Spec, tv_root: Path, side: str, download: bool):
    kw = dict(spec.kwargs(side))
    if download:
        kw["download"] = True
    return spec.cls(str(tv_root), **kw)


def _open(spec: _Spec, roots: list[Path], sides: list[str], download: bool) -> tuple[Path, Path, dict]:
    """(the root the user meant, the root torchvision reads, {side: dataset})."""
    if download and not spec.takes_download:
        raise DataError(f"torchvision cannot download {spec.cls_name}; fetch it by hand as its documentation "
                        "says and drop --download")
    root = roots[0]
    tv_root = None
    fetch = download  # MNIST-style files found on disk are read as they are, without asking torchvision to fetch
    if spec.is_mnist_family:
        files = _idx_files(spec, sides)
        for candidate in roots:
            state, sources = _locate_idx(spec, candidate, files)
            if state == "ready":
                root, tv_root = candidate, candidate
                break
            if state == "flat":
                root = candidate
                tv_root = _prepare_idx(spec.cls_name, sources, _prepared_root_for(candidate.resolve()))
                break
        if tv_root is None and not download:
            raise DataError(_missing_message(spec, roots[0]))
        fetch = tv_root is None
    if tv_root is None:
        tv_root = root
    datasets = {}
    for side in sides:
        try:
            datasets[side] = _construct(spec, tv_root, side, download=fetch)
        except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError/URLError/OSError/ValueError
            said = " ".join(str(e).split()).replace(" You can use download=True to download it", "")
            text = f"{type(e).__name__}: {said[:400]}"
            if fetch:
                raise DataError(f"downloading torchvision dataset {spec.display} into {str(root)!r} failed ({text});"
                                " check the network (or a proxy) and re-run, or fetch the files by hand: torchvision "
                                f"looks for {_expected_where(spec, root)}") from None
            raise DataError(_missing_message(spec, root, text)) from None
    return root, tv_root, datasets


# ---------------------------------------------------------------------------------------------- rows


def _pixel_array(ds):
    """The dataset's images as one (N, ...) numpy array, or None when it keeps none."""
    data = getattr(ds, "data", None)
    try:
        if isinstance(data, torch.Tensor):
            data = data.numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(data, np.ndarray) and data.dtype != object and data.ndim >= 2 and len(data) == len(ds):
        return data
    return None


def _file_list(ds) -> list[str] | None:
    """Image file paths in row order, for file-backed datasets (Flowers102, ImageNet, Food101, ...)."""
    n = len(ds)
    for attr in ("_image_files", "samples", "_samples", "imgs", "data"):  # LFWPeople: `data` is its file list
        v = getattr(ds, attr, None)
        if not isinstance(v, (list, tuple)) or len(v) != n or not n:
            continue
        first = v[0][0] if isinstance(v[0], (list, tuple)) else v[0]
        if isinstance(first, (str, os.PathLike)):
            return [os.fspath(x[0] if isinstance(x, (list, tuple)) else x) for x in v]
    return None


def _labels(ds) -> np.ndarray:
    n = len(ds)
    values = None
    for attr in ("targets", "labels", "_labels"):
        v = getattr(ds, attr, None)
        if v is not None and not isinstance(v, (str, dict)) and hasattr(v, "__len__") and len(v) == n:
            if getattr(v, "ndim", 1) == 2:  # QMNIST: one row of 8 fields per image, the class first
                v = v[:, 0]
            values = v.tolist() if hasattr(v, "tolist") else list(v)
            break
    if values is None:
        for attr in ("samples", "_samples", "imgs"):
            v = getattr(ds, attr, None)
            if isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(x, tuple) for x in v[:1]):
                values = [x[1] for x in v]
                break
    if values is None:  # last resort: ask every row (decodes every image)
        values = [ds[i][1] for i in range(n)]
    out = np.full(n, -1, dtype=np.int64)
    for i, y in enumerate(values):
        if y is not None:
            out[i] = int(y)
    return out


def _class_names(ds, labels: np.ndarray) -> list[str]:
    top = int(labels.max(initial=-1))
    classes = getattr(ds, "classes", None)
    if isinstance(classes, (list, tuple)) and classes and len(classes) > top:
        return [str(c[0] if isinstance(c, (list, tuple)) and c else c) for c in classes]
    return [str(k) for k in range(top + 1)]


def _to_pil(img):
    if isinstance(img, Image.Image):
        return img
    from torchvision.transforms.functional import to_pil_image  # torchvision only for tensor images

    return to_pil_image(img)


class TorchvisionReader:
    """Rows of one or two splits of a torchvision dataset; picklable (the datasets are rebuilt lazily after
    unpickling, in spawned workers) and fork-friendly (forked workers share the parent's arrays)."""

    def __init__(self, spec: _Spec, tv_root: str, sides: list[str], row_side: np.ndarray, row_index: np.ndarray,
                 datasets: dict | None = None):
        self.spec, self.tv_root, self.sides = spec, tv_root, sides
        self.row_side, self.row_index = row_side, row_index  # int8 position in `sides`, int64 index in that split
        self._datasets = dict(datasets or {})

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_datasets"] = {}
        return state

    def __len__(self) -> int:
        return len(self.row_index)

    def dataset(self, side: str):
        ds = self._datasets.get(side)
        if ds is None:
            ds = self._datasets[side] = _construct(self.spec, Path(self.tv_root), side, download=False)
        return ds

    def load(self, i: int):
        ds = self.dataset(self.sides[self.row_side[i]])
        return to_rgb(_to_pil(ds[int(self.row_index[i])][0]))

    def row_key(self, side: str, index: int) -> bytes:
        return f"torchvision/{self.spec.key_name}/{self.spec.own_split(side)}/{index}\n".encode()

    def digests(self, digest_cache=None) -> list[str | None]:
        """BLAKE2b-128 of (dataset name, split, index) and the pixels, one per row (hex, 32 characters).

        From the dataset's pixel array when it keeps one (MNIST family, CIFAR, SVHN, STL10, USPS); else from
        each image file's digest (through the store's stat cache); else from the decoded image."""
        out: list[str | None] = [None] * len(self)
        for s, side in enumerate(self.sides):
            rows = np.flatnonzero(self.row_side == s)
            if not len(rows):
                continue
            ds = self.dataset(side)
            idx = self.row_index[rows]
            arr = _pixel_array(ds)
            if arr is not None:
                flat = np.ascontiguousarray(arr).reshape(len(arr), -1)
                shape = f"{arr.dtype.str}{tuple(arr.shape[1:])}\n".encode()
                for r, j in zip(rows.tolist(), idx.tolist()):
                    h = hashlib.blake2b(self.row_key(side, j), digest_size=DIGEST_SIZE)
                    h.update(shape)
                    h.update(flat[j])
                    out[r] = h.hexdigest()
                continue
            files = _file_list(ds)
            if files is not None:
                paths = [files[j] for j in idx.tolist()]
                if digest_cache is not None:
                    file_digests = digest_cache.digests(paths)
                else:
                    file_digests = []
                    for p in paths:
                        try:
                            file_digests.append(digest_file(p))
                        except OSError:
                            file_digests.append(None)
                for r, j, fd in zip(rows.tolist(), idx.tolist(), file_digests):
                    if fd is not None:
                        out[r] = hashlib.blake2b(self.row_key(side, j) + b"file:" + fd.encode(),
                                                 digest_size=DIGEST_SIZE).hexdigest()
                continue
            for r, j in zip(rows.tolist(), idx.tolist()):
                try:
                    img = _to_pil(ds[j][0])
                except Exception:  # noqa: BLE001 - an unreadable row; the --on-error policy decides
                    continue
                h = hashlib.blake2b(self.row_key(side, j), digest_size=DIGEST_SIZE)
                h.update(f"pil:{img.mode}{img.size}\n".encode())
                h.update(img.tobytes())
                out[r] = h.hexdigest()
        return out


def default_root() -> str:
    """``--root`` when not given: ``$TORCHVISION_DATA``, else ``./data`` (torchvision's tutorials' choice)."""
    return os.environ.get("TORCHVISION_DATA") or "data"


def from_torchvision(name: str, *, root: str | os.PathLike | None = None, split: str = "all",
                     download: bool = False) -> Manifest:
    """A manifest of torchvision dataset ``name`` (e.g. ``"FashionMNIST"``, ``"CIFAR10"``, ``"EMNIST:letters"``).

    ``root``: the folder torchvision reads (``<root>/FashionMNIST/raw/...``, ``<root>/cifar-10-batches-py``);
    for MNIST-style datasets also a folder of the IDX files themselves. Default :func:`default_root`; for
    FashionMNIST, when that does not hold it, Debian's ``/usr/share/datasets/fashion-mnist`` if installed.
    ``split``: ``"train"``, ``"test"`` or ``"all"`` (train rows, then test rows). ``download``: let torchvision
    fetch missing files into ``root``.
    """
    if split not in TV_SPLITS:
        raise UnknownNameError("--split for torchvision data", split, TV_SPLITS,
                               hint="expected all (train then test), train or test")
    spec = _parse_name(name)
    sides = ["train", "test"] if split == "all" else [split]
    roots = [Path(root if root is not None else default_root()).expanduser()]
    if root is None and spec.cls_name == "FashionMNIST" and DEBIAN_FASHION_MNIST.is_dir() and not download:
        roots.append(DEBIAN_FASHION_MNIST)
    user_root, tv_root, datasets = _open(spec, roots, sides, download)

    ids: list[str] = []
    labels, row_side, row_index, columns = [], [], [], []
    class_names: list[str] = []
    for s, side in enumerate(sides):
        ds = datasets[side]
        n = len(ds)
        col = spec.column(side)
        ids += [f"{col}/{i:05d}" for i in range(n)]
        lab = _labels(ds)
        labels.append(lab)
        row_side.append(np.full(n, s, dtype=np.int8))
        row_index.append(np.arange(n, dtype=np.int64))
        columns += [col] * n
        names = _class_names(ds, lab)
        if len(names) > len(class_names):
            class_names = names
    if not ids:
        raise DataError(f"torchvision dataset {spec.display} under {str(user_root)!r} has no rows "
                        f"for split {split!r}")
    reader = TorchvisionReader(spec, str(tv_root.resolve()), sides, np.concatenate(row_side),
                               np.concatenate(row_index), datasets)
    return Manifest(
        name=slug(spec.key_name if split == "all" else f"{spec.key_name}-{split}"),
        source=spec.source,
        root=str(user_root.resolve()),
        ids=ids,
        paths=list(ids),  # virtual: the rows are not files
        labels=np.concatenate(labels).astype(np.int64),
        class_names=class_names,
        split=columns,
        reader=reader,
    )
