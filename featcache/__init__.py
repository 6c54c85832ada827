"""featcache: transfer learning with cached embeddings.

Stage one (:func:`extract`) runs a frozen pretrained backbone over a dataset and
stores its features in an HDF5 feature store; stage two trains lightweight heads
on the stored features (:func:`load_features`, :func:`fit_head`), applies a saved
head to new images (:func:`predict`) and keeps a results log (:func:`read_results`,
:func:`results_table`). Heads: :func:`list_heads`, :func:`make_head`,
:func:`default_grid`; head files: :func:`save_head`, :func:`load_head`.

Every name is imported on first use, so ``import featcache`` stays cheap.
"""
__version__ = "0.1.0"

from featcache.errors import FeatcacheError  # noqa: E402


#: stage-two names -> the module that defines them
_LAZY = {
    "fit_head": "featcache.train", "FitResult": "featcache.train",
    "predict": "featcache.prediction", "Prediction": "featcache.prediction",
    "save_head": "featcache.persist", "load_head": "featcache.persist", "LoadedHead": "featcache.persist",
    "make_head": "featcache.heads", "list_heads": "featcache.heads", "default_grid": "featcache.heads",
    "read_results": "featcache.results", "results_table": "featcache.results",
    "append_result": "featcache.results", "sweep": "featcache.sweeps", "SweepResult": "featcache.sweeps",
}


def __getattr__(name):  # lazy: `import featcache` stays cheap for the CLI
    if name in ("extract", "ExtractResult"):
        from featcache import engine as _m

        return getattr(_m, name)
    if name in ("load_features", "Features"):
        from featcache import views as _m

        return getattr(_m, name)
    if name in ("FeatureStore",):
        from featcache.store import FeatureStore

        return FeatureStore
    if name in ("list_backbones", "get_backbone"):
        from featcache import backbones as _m

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
