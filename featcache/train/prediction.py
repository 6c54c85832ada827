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
from dataclasses import dataclass, field, replace

import numpy as np

from featcache.errors import FeatcacheError, HeadError
from featcache.extraction.entry import extract, resolve_key
from featcache.extraction.report import ExtractResult
from featcache.specs import OWNER, BackboneSpec, DataSpec, RunSpec, specs_from_keywords
from featcache.store.featureset import FeatureStore
from featcache.store.keys import FeatureIdentity
from featcache.store.resolutions import ResolutionIndex, request_spec
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


def predict(head_path: str | os.PathLike, data: str | DataSpec, run: RunSpec | None = None,
            **options) -> Prediction:
    """Labels and probabilities of the images in ``data`` (folder, CSV, builtin:..., or a DataSpec).

    The features are extracted under the head's own identity (a BackboneSpec rebuilt from
    it) with ``run`` (a RunSpec); ``options`` are fields of the specs applied on top. The
    head's feature key is checked against its recorded identity (and against ``options``
    that change the identity) before any image is read: a mismatch is a :class:`HeadError`
    and nothing is extracted.
    """
    loaded = load_head(head_path)
    data, _, run = specs_from_keywords(data, None, run, **{"labelled": False, "label_column": None, **options})
    spec = head_backbone_spec(loaded, head_path, run)  # checks that it gives the head's feature key
    given = replace(spec, **{k: v for k, v in options.items() if OWNER.get(k) is BackboneSpec})
    if given != spec:  # options given to predict() that change the features
        check_feature_key(loaded, resolve_key(given, run))
    r: ExtractResult = extract(data, given, run)
    check_feature_key(loaded, r.feature_key)
    f = load_features(r.view)
    proba = loaded.head.predict_proba(f.features) if len(f.features) else np.zeros((0, len(loaded.head.classes_)))
    best = np.argmax(proba, axis=1) if len(proba) else np.zeros(0, dtype=int)
    names = loaded.class_names or [str(c) for c in loaded.head.classes_]
    rows = [{"path": i, "label": names[int(loaded.head.classes_[b])] if loaded.class_names else names[b],
             "probability": float(proba[k, b])} for k, (i, b) in enumerate(zip(f.ids, best))]
    return Prediction(rows=rows, head=loaded.name, feature_key=r.feature_key, extraction=r.to_dict())


def head_backbone_spec(loaded: LoadedHead, head_path, run: RunSpec | None = None) -> BackboneSpec:
    """The BackboneSpec of a head's features, from the resolution index of ``run``'s store when it
    knows the head's key (no torch), else rebuilt from the head's recorded identity; a HeadError
    when that does not give the head's feature key."""
    identity = (loaded.metadata or {}).get("identity")
    if not identity or not isinstance(identity, dict):
        raise HeadError(f"head file {head_path} does not record the identity of its features; re-fit it with "
                        "`featcache fit-head`")
    known = indexed_spec(loaded, identity, run or RunSpec())
    if known is not None:
        return known
    # torch: rebuilding a spec from an identity needs the backbone registry
    from featcache.extraction.identity import resolve_identity, spec_from_identity

    try:
        spec = spec_from_identity(identity, (loaded.metadata or {}).get("weights_path"))
        key = resolve_identity(spec).identity.key
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
    return spec


def indexed_spec(loaded: LoadedHead, identity: dict, run: RunSpec) -> BackboneSpec | None:
    """A BackboneSpec giving the head's feature key, from the store's resolution index (no torch);
    None when the index knows none, or when the recorded identity does not give the key."""
    try:
        if FeatureIdentity.from_dict(identity).key != loaded.feature_key:
            return None  # the full path says what is wrong
    except (KeyError, TypeError, ValueError):
        return None
    index = ResolutionIndex(FeatureStore(run.cache_dir).root)
    known = [o for o in index.options_for(loaded.feature_key) if not o.get("extra")]
    if not known:
        return None
    same = [o for o in known if o["device"] == run.device]
    spec = request_spec((same or known)[0])
    # resolved for another device: its "auto" precision may resolve otherwise here, the identity's may not
    return spec if same else replace(spec, precision=identity["precision"])
