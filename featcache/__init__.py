"""featcache: transfer learning with cached embeddings.

Stage one (:func:`extract`) runs a frozen pretrained backbone over a dataset and
stores its features in an HDF5 feature store; stage two trains lightweight heads
on the stored features (:func:`load_features`, :func:`fit_head`), applies a saved
head to new images (:func:`predict`) and keeps a results log (:func:`read_results`,
:func:`results_table`). Heads: :func:`list_heads`, :func:`make_head`,
:func:`default_grid`; head files: :func:`save_head`, :func:`load_head`.

Every name is imported on first use, so ``import featcache`` stays cheap.
"""
from featcache._version import __version__
from featcache.errors import FeatcacheError


#: stage-two names -> the module that defines them
_LAZY = {
    "fit_head": "featcache.train.fitting", "FitResult": "featcache.train.fitting",
    "predict": "featcache.train.prediction", "Prediction": "featcache.train.prediction",
    "save_head": "featcache.train.persist", "load_head": "featcache.train.persist", "LoadedHead": "featcache.train.persist",
    "make_head": "featcache.train.heads", "list_heads": "featcache.train.heads", "default_grid": "featcache.train.heads",
    "read_results": "featcache.train.results", "results_table": "featcache.train.results",
    "append_result": "featcache.train.results", "sweep": "featcache.train.sweeps", "SweepResult": "featcache.train.sweeps",
}


def __getattr__(name):  # lazy: `import featcache` stays cheap for the CLI
    if name == "extract":  # the resolution index first: a cache hit imports no torch
        from featcache.extraction.entry import extract

        return extract
    if name == "ExtractResult":
        from featcache.extraction.report import ExtractResult

        return ExtractResult
    if name in ("load_features", "Features"):
        from featcache.store import views as _m

        return getattr(_m, name)
    if name in ("FeatureStore",):
        from featcache.store.featureset import FeatureStore

        return FeatureStore
    if name in ("list_backbones", "get_backbone"):
        from featcache.extraction.backbones import registry as _m

        return getattr(_m, name)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")


__all__ = ["extract", "ExtractResult", "load_features", "Features", "FeatureStore", "list_backbones",
           "get_backbone", "FeatcacheError", "__version__",
           # stage two (_LAZY)
           "fit_head", "FitResult", "predict", "Prediction", "save_head", "load_head", "LoadedHead", "make_head",
           "list_heads", "default_grid", "read_results", "results_table", "append_result", "sweep", "SweepResult"]
