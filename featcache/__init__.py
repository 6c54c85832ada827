"""featcache: transfer learning with cached embeddings.

Stage one (:func:`extract`, options in :class:`DataSpec`, :class:`BackboneSpec`,
:class:`RunSpec`) runs a frozen pretrained backbone over a dataset and
stores its features in an HDF5 feature store; stage two trains lightweight heads
on the stored features (:func:`load_features`, :func:`fit_head`), applies a saved
head to new images (:func:`predict`) and keeps a results log (:func:`read_results`,
:func:`results_table`) and compares heads with confidence intervals and paired tests
(:func:`compare`). Heads: :func:`list_heads`, :func:`make_head`, :func:`check_head`,
:func:`default_grid`; head files: :func:`save_head`, :func:`load_head`.

Every name is imported on first use, so ``import featcache`` stays cheap.
"""
import importlib

from featcache._version import __version__
from featcache.errors import FeatcacheError


#: public name -> the module that defines it (imported on first use)
_LAZY = {
    "extract": "featcache.extraction.entry", "ExtractResult": "featcache.extraction.report",
    "DataSpec": "featcache.specs", "BackboneSpec": "featcache.specs", "RunSpec": "featcache.specs",
    "load_features": "featcache.store.views", "Features": "featcache.store.views",
    "FeatureStore": "featcache.store.featureset",
    "list_backbones": "featcache.extraction.backbones", "get_backbone": "featcache.extraction.backbones",
    "fit_head": "featcache.train.fitting", "FitResult": "featcache.train.fitting",
    "train_head": "featcache.train.session",
    "predict": "featcache.train.prediction", "Prediction": "featcache.train.prediction",
    "save_head": "featcache.train.persist", "load_head": "featcache.train.persist", "LoadedHead": "featcache.train.persist",
    "make_head": "featcache.train.heads", "list_heads": "featcache.train.heads", "default_grid": "featcache.train.heads",
    "check_head": "featcache.train.heads",
    "read_results": "featcache.train.results", "results_table": "featcache.train.results",
    "append_result": "featcache.train.results", "sweep": "featcache.train.sweeps", "SweepResult": "featcache.train.sweeps",
    "compare": "featcache.train.compare", "CompareResult": "featcache.train.compare",
}


def __getattr__(name):  # lazy: `import featcache` stays cheap for the CLI
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")


__all__ = ["FeatcacheError", "__version__", *_LAZY]
