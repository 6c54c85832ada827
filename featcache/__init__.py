"""featcache: transfer learning with cached embeddings.

Stage one (:func:`extract`) runs a frozen pretrained backbone over a dataset and
stores its features in an HDF5 feature store; stage two trains lightweight heads
on the stored features (:func:`load_features`).
"""
__version__ = "0.1.0"

from featcache.errors import FeatcacheError  # noqa: E402


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
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")


__all__ = ["extract", "ExtractResult", "load_features", "Features", "FeatureStore", "list_backbones",
           "get_backbone", "FeatcacheError", "__version__"]
