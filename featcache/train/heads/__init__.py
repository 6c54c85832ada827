"""Heads: lightweight classifiers trained on cached features.

Every head is a scikit-learn classifier (``clone``, ``GridSearchCV``, ``cross_val_score``
work) with ``get_state()`` / ``from_state(params, state)`` for pickle-free persistence
(see :mod:`featcache.train.persist`).

========  =====================================================================
name      head
========  =====================================================================
linear    torch linear layer on standardised features (AdamW, early stopping)
mlp       torch ReLU MLP (``hidden_sizes``, ``dropout``) on standardised features
logreg    StandardScaler + LogisticRegression (``C``)
svm       StandardScaler + LinearSVC (``C``); predict_proba = softmax(decision)
knn       cosine kNN: L2-normalise + KNeighborsClassifier (``n_neighbors``, ``weights``)
ncm       nearest class mean, cosine; predict_proba = softmax(-d^2 / ``temperature``)
========  =====================================================================
"""
from featcache.train.heads.base import BLOCK_BYTES, HeadBase, HeadInputError, is_lazy
from featcache.train.heads.registry import (
    HEADS,
    check_head,
    default_grid,
    get_head_class,
    head_name,
    list_heads,
    make_head,
    register_head,
)
from featcache.train.heads.sklearn_heads import KNNHead, LogRegHead, NCMHead, SVMHead

#: heads that train with torch: listed at once, imported when first used
TORCH_HEADS = {"LinearHead": "linear", "MLPHead": "mlp"}
HEADS.declare("featcache.train.heads.torch_heads", tuple(TORCH_HEADS.values()))


def __getattr__(name: str):  # LinearHead, MLPHead: imported on first use
    if name in TORCH_HEADS:
        return HEADS[TORCH_HEADS[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BLOCK_BYTES",
    "HEADS",
    "HeadBase",
    "HeadInputError",
    "KNNHead",
    "LinearHead",
    "LogRegHead",
    "MLPHead",
    "NCMHead",
    "SVMHead",
    "check_head",
    "default_grid",
    "get_head_class",
    "head_name",
    "is_lazy",
    "list_heads",
    "make_head",
    "register_head",
]
