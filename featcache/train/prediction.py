"""Predicting labels of new images with a saved head, reusing the feature cache.

The head file carries the identity of the features it was trained on; the new
images are extracted (or found in the store) under exactly that identity, and a
head paired with features of another identity is refused. The feature key is
computed from the head's identity *before* anything is extracted, so a head whose
recorded identity does not give its feature key (an edited file, or features whose
identity this featcache version computes differently) costs no extraction.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field

import numpy as np

from featcache.errors import FeatcacheError, HeadError
from featcache.extraction.entry import extract, resolve_key
from featcache.extraction.report import ExtractResult
from featcache.store.featureset import FeatureStore
from featcache.store.keys import FeatureIdentity
from featcache.store.resolutions import ResolutionIndex
from featcache.store.views import load_features
from featcache.train.persist import LoadedHead, check_feature_key, load_head


@dataclass
class Prediction:
    rows: list[dict]
    head: str
    feature_key: str
    extraction: dict = field(default_factory=dict)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["path", "label", "probability"], lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({**r, "probability": f"{r['probability']:.6f}"})
        return buf.getvalue()

    def to_dict(self) -> dict:
        return {"head": self.head, "feature_key": self.feature_key, "extraction": self.extraction,
                "predictions": self.rows}


def predict(head_path: str | os.PathLike, data: str, *, cache_dir=None, batch_size: int = 64,
            workers: int | None = None, device: str = "auto", on_error: str = "fail", progress: bool = False,
            **data_options) -> Prediction:
    """Labels and probabilities of the images in ``data`` (folder, CSV, builtin:...).

    The head's feature key is checked against its recorded identity (and ``data_options``
    that change the identity) before any image is read: a mismatch is a :class:`HeadError`
    and nothing is extracted.
    """
    loaded = load_head(head_path)
    identity = (loaded.metadata or {}).get("identity")
    if not identity or not isinstance(identity, dict):
        raise HeadError(f"head file {head_path} does not record the identity of its features; re-fit it with "
                        "`featcache fit-head`")
    # options that give the head's feature key (checked): from the resolution index, else resolved in full
    opts = _indexed_options(loaded, identity, cache_dir, device) or _options_of(loaded, identity, head_path, cache_dir)
    opts.update(labelled=False, label_column=None)
    opts.update(data_options)
    if any(k in _IDENTITY_OPTIONS for k in data_options):  # options given to predict() that change the features
        check_feature_key(loaded, feature_key_of(opts, device, cache_dir))
    r: ExtractResult = extract(data, cache_dir=cache_dir, batch_size=batch_size, workers=workers, device=device,
                               on_error=on_error, progress=progress, **opts)
    check_feature_key(loaded, r.feature_key)
    f = load_features(r.view)
    proba = loaded.head.predict_proba(f.features) if len(f.features) else np.zeros((0, len(loaded.head.classes_)))
    best = np.argmax(proba, axis=1) if len(proba) else np.zeros(0, dtype=int)
    names = loaded.class_names or [str(c) for c in loaded.head.classes_]
    rows = [{"path": i, "label": names[int(loaded.head.classes_[b])] if loaded.class_names else names[b],
             "probability": float(proba[k, b])} for k, (i, b) in enumerate(zip(f.ids, best))]
    return Prediction(rows=rows, head=loaded.name, feature_key=r.feature_key, extraction=r.to_dict())


#: extract() options that are part of the feature identity (the others do not change the numbers)
_IDENTITY_OPTIONS = ("backbone", "weights", "layer", "pool", "image_size", "precision", "dtype", "decode")


def feature_key_of(opts: dict, device: str = "auto", cache_dir=None) -> str:
    """The feature key :func:`featcache.extract` would use with these options (nothing is built or read;
    the resolution index of the store ``cache_dir`` answers when it can)."""
    return resolve_key({**{k: opts[k] for k in _IDENTITY_OPTIONS if k in opts}, "device": device,
                        "cache_dir": cache_dir})


def _indexed_options(loaded: LoadedHead, identity: dict, cache_dir, device: str) -> dict | None:
    """extract() options giving the head's feature key, from the resolution index (no torch); None when
    the index knows none, or the recorded identity does not give the key (the full path says why)."""
    try:
        if FeatureIdentity.from_dict(identity).key != loaded.feature_key:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    known = [o for o in ResolutionIndex(FeatureStore(cache_dir).root).options_for(loaded.feature_key)
             if not o.get("extra")]
    if not known:
        return None
    same = [o for o in known if o["device"] == device]
    opts = {k: (same or known)[0][k] for k in _IDENTITY_OPTIONS}
    if not same:  # resolved on another device: its `auto` precision may differ there, the identity's may not
        opts["precision"] = identity["precision"]
    return opts


def _options_of(loaded: LoadedHead, identity: dict, head_path, cache_dir=None) -> dict:
    """extract() options reproducing the head's identity; a HeadError when they do not give its key."""
    # torch: recovering the options from an identity needs the backbone registry
    from featcache.extraction.engine import options_from_identity

    try:
        opts = options_from_identity(identity, (loaded.metadata or {}).get("weights_path"))
        key = feature_key_of(opts, cache_dir=cache_dir)
    except FeatcacheError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise HeadError(f"head file {head_path} has an unreadable feature identity ({type(e).__name__}: {e}); "
                        "expected the identity written by `featcache fit-head`; re-fit the head") from None
    if key != loaded.feature_key:
        raise HeadError(
            f"head file {head_path} records features {loaded.feature_key!r}, but its recorded identity "
            f"(backbone {identity.get('backbone')!r}, layer {identity.get('layer')!r}) gives the feature key "
            f"{key!r}; expected them to agree (the file was edited, or written by a featcache version that "
            "computes feature identities differently); nothing was extracted; re-fit the head with "
            "`featcache fit-head` on the features you want to use")
    return opts

