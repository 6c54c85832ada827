"""Training a head where the features come from: a cached view, or data extracted on the way.

What ``featcache fit-head`` and ``featcache run`` share: the views a head is fitted on
(the plain view, and the augmented copies of its training rows when the BackboneSpec asks
for them), and the fit itself. :func:`train_head` is the one library call behind
``fit-head``; a pipeline extracts once per backbone and calls :func:`fit_on` per head.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from featcache.errors import FeatcacheError
from featcache.extraction.augment import find_augmented_view
from featcache.extraction.entry import extract
from featcache.extraction.manifest import Manifest
from featcache.extraction.report import ExtractResult
from featcache.specs import BackboneSpec, DataSpec, RunSpec
from featcache.store.views import Features, load_features
from featcache.train.fitting import FitResult, check_fit_arguments, fit_head


@dataclass(frozen=True)
class TrainingViews:
    """The plain view a head is fitted on, and the view of augmented copies of its training rows (or None)."""

    features: str | os.PathLike | Features
    augmented: str | None = None

    @classmethod
    def of_extraction(cls, result: ExtractResult) -> "TrainingViews":
        return cls(result.view, result.augmented["view"] if result.augmented else None)

    @classmethod
    def of_cached(cls, ref: str | os.PathLike, backbone: BackboneSpec, cache_dir=None) -> "TrainingViews":
        """A cached view (path, KEY, KEY:DATA) and, when ``backbone.augment``, its augmented view."""
        if not backbone.augment:
            return cls(ref)
        plain = load_features(ref, cache_dir=cache_dir, mmap=True)
        plain.features.file.close()
        return cls(ref, find_augmented_view(plain.identity, plain.attrs.get("data_name", ""), backbone.augment,
                                            backbone.augment_seed, cache_dir))


def fit_on(views: TrainingViews, head: str, **fit_options) -> FitResult:
    """:func:`~featcache.train.fitting.fit_head` on ``views`` (plain rows plus the augmented copies)."""
    return fit_head(views.features, head, augmented=views.augmented, **fit_options)


def train_head(head: str, *, features: str | os.PathLike | None = None,
               data: DataSpec | Manifest | str | None = None, backbone: BackboneSpec | None = None,
               run: RunSpec | None = None, params: dict | None = None, grid: dict | None = None,
               seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15, n_jobs: int | None = -1,
               **fit_options) -> FitResult:
    """Fit ``head`` on a cached view (``features``) or on ``data`` extracted on the way (a cache hit when
    done already) with ``backbone`` and ``run``. Bad head arguments fail before anything is extracted."""
    if (features is None) == (data is None):
        raise FeatcacheError("a head is trained on exactly one of: features (a cached view) or data "
                             "(extracted on the way, a cache hit when already done); give one of them")
    check_fit_arguments(head, params=params, grid=grid, seed=seed, val_fraction=val_fraction,
                        test_fraction=test_fraction, n_jobs=n_jobs, plot=fit_options.get("plot"))
    backbone, run = backbone or BackboneSpec(), run or RunSpec()
    if data is not None:
        views = TrainingViews.of_extraction(extract(data, backbone, run))
    else:
        views = TrainingViews.of_cached(features, backbone, run.cache_dir)
    return fit_on(views, head, params=params, grid=grid, seed=seed, val_fraction=val_fraction,
                  test_fraction=test_fraction, n_jobs=n_jobs, cache_dir=run.cache_dir, **fit_options)
