"""Predicting labels of new images with a saved head, reusing the feature cache.

The head file carries the identity of the features it was trained on; the new
images are extracted (or found in the store) under exactly that identity, and a
head paired with features of another identity is refused.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field

import numpy as np

from featcache.engine import ExtractResult, extract, options_from_identity
from featcache.errors import HeadError
from featcache.persist import check_feature_key, load_head
from featcache.views import load_features


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
    """Labels and probabilities of the images in ``data`` (folder, CSV, builtin:...)."""
    loaded = load_head(head_path)
    identity = (loaded.metadata or {}).get("identity")
    if not identity:
        raise HeadError(f"head file {head_path} does not record the identity of its features; re-fit it with "
                        "`featcache fit-head`")
    opts = options_from_identity(identity, (loaded.metadata or {}).get("weights_path"))
    opts.update(labelled=False, label_column=None)
    opts.update(data_options)
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
