"""A manifest: the rows of a dataset in a stable order (ids, paths, labels, class names, splits).

Every data source (folders and CSVs in :mod:`featcache.extraction.sources`, torchvision
datasets in :mod:`featcache.extraction.tvdata`, augmented copies) produces one.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from featcache.extraction.imagefiles import FileReader


@dataclass
class Manifest:
    """The rows of a dataset in a stable order."""

    name: str  # short, file-name safe, e.g. "clipart" or "train-csv"
    source: str  # what the user passed
    root: str
    ids: list[str]  # paths relative to root (posix), stable and unique
    paths: list[str]  # absolute paths
    labels: np.ndarray  # int64, -1 = unlabelled
    class_names: list[str]
    split: list[str]  # "train" | "val" | "test" | ""
    ignored: list[str] = field(default_factory=list)  # non-image files seen
    digests: list[str | None] | None = None
    reader: object = None  # .load(i) -> PIL image, .digests(cache); default: the files in `paths`

    def __post_init__(self):
        if self.reader is None:
            self.reader = FileReader(self.paths)

    def compute_digests(self, digest_cache) -> list[str | None]:
        """Row keys: content digests (None = unreadable); computed once."""
        if self.digests is None:
            self.digests = self.reader.digests(digest_cache)
        return self.digests

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).any())

    def fingerprint(self) -> str:
        """Digest of everything a view holds besides the features."""
        if self.digests is None:
            raise RuntimeError("digests not computed")
        h = hashlib.sha256()
        for parts in (self.ids, [d or "-" for d in self.digests], [str(x) for x in self.labels.tolist()],
                      self.split, self.class_names):
            h.update("\x1f".join(parts).encode("utf-8", "surrogateescape"))
            h.update(b"\x1e")
        return h.hexdigest()[:16]


def safe_id(text: str) -> str:
    """A row id that is valid UTF-8: bytes of non-UTF-8 file names appear as \\xNN escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())
    return "-".join(filter(None, keep.split("-")))[:40] or "data"
