"""Heads trained with PyTorch: ``linear`` (one linear layer) and ``mlp`` (ReLU MLP with dropout).

Training: features standardised with a mean/std learned in ``fit`` (``mean_``, ``scale_``),
AdamW (no weight decay on biases), cross-entropy, mini-batches, for a planned number of epochs
(``max_epochs``; "auto" by a rule of the data's size) along which the learning rate follows
``lr_schedule`` (by default a cosine from ``lr`` down to 0). With ``early_stopping`` a
stratified ``validation_fraction`` of the training rows is held out, the validation accuracy is
measured after every epoch, and the weights of the best epoch are restored (among epochs with
the best accuracy, the one with the lowest validation loss); training also stops when the
validation accuracy has not improved for ``patience`` epochs (like scikit-learn's
``MLPClassifier``).

Everything random (split, initialisation, shuffling, dropout) is drawn from generators seeded
with ``random_state``; global seeds are never touched, so the same data and ``random_state``
give identical predictions (on the same device). The initial weights, the dropout masks and the
order of the rows each have their own generator, so that the same ``random_state`` gives
every architecture the same mini-batches.

``X`` may be a numpy array or a lazy array (``h5py.Dataset``, ``np.memmap``, ...; see
:func:`featcache.train.heads.base.is_lazy`). A lazy array is never read whole: the mean/std come
from one streaming pass, and each epoch visits blocks of contiguous rows
(:data:`featcache.train.heads.base.BLOCK_BYTES` each) in shuffled order, shuffling the rows within
a block. The validation rows are kept in memory when they fit in ``VAL_CACHE_BYTES``
(:mod:`featcache.train.heads._torch_train`) and are re-read blockwise otherwise.

Predictions are computed in float64 with numpy from the learned arrays (``coefs_``,
``intercepts_``), independent of the training device and of the batch composition.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit

from featcache.errors import HeadError
from featcache.train.heads._epochs import fit_one
from featcache.train.heads._torch_grid import fit_linear_grid
from featcache.train.heads._torch_mlp_grid import fit_mlp_grid, trains_together
from featcache.train.heads._torch_train import (
    LR_SCHEDULES,
    PRECISIONS,
    DataPlan,
    Net,
    Prepared,
    batch_and_lr,
    check_device_name,
    cpu_threads,
    head_device,
    planned_epochs,
    torch_module,
    training_dtype,
)
from featcache.train.heads.base import HeadBase, HeadInputError, is_lazy, seed_from, standardized_affine
from featcache.train.heads.registry import register_head

#: The generator of the rows' order (shuffle-once and every epoch's batch order) is seeded with
#: ``random_state + DATA_ORDER_SEED``; the initial weights use ``random_state``, dropout
#: ``random_state + 1``.
DATA_ORDER_SEED = 2


class _TorchHead(HeadBase):
    """Shared training loop of the torch heads (subclasses define the layer sizes)."""

    _state_keys = (
        "classes_", "n_features_in_", "mean_", "scale_", "n_epochs_", "best_epoch_",
        "loss_curve_", "validation_scores_", "validation_loss_curve_",
    )

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int | str = "auto",
        max_epochs: int | str = "auto",
        lr_schedule: str = "cosine",
        patience: int = 10,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        random_state=0,
        device: str = "auto",
        precision: str = "auto",
    ):
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr_schedule = lr_schedule
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.random_state = random_state
        self.device = device
        self.precision = precision

    #: ``max_epochs="auto"``: (at least this many epochs, at least this many steps), see
    #: :func:`~featcache.train.heads._torch_train.planned_epochs`; set per head from the
    #: measurements in benchmarks/README.md ("A planned cosine schedule").
    _auto_epochs: tuple[int, int] = (7, 240)

    def _hidden(self) -> tuple[int, ...]:
        return ()

    def _dropout(self) -> float:
        return 0.0

    # ---------------------------------------------------------------- parameters
    def check_params(self) -> None:
        def bad(name, expected):
            raise HeadInputError(
                f"{type(self).__name__}: {name}={getattr(self, name)!r} is not valid; "
                f"expected {expected}; fix the {name} parameter"
            )

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)

        if not (is_num(self.lr) and self.lr > 0):
            bad("lr", "a positive number")
        if not (is_num(self.weight_decay) and self.weight_decay >= 0):
            bad("weight_decay", "a number >= 0")
        if not (self.batch_size == "auto" or is_int(self.batch_size) and self.batch_size >= 1):
            bad("batch_size", "a positive int or 'auto'")
        if not (self.max_epochs == "auto" or is_int(self.max_epochs) and self.max_epochs >= 1):
            bad("max_epochs", "a positive int or 'auto'")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", " or ".join(repr(s) for s in LR_SCHEDULES))
        if not (is_int(self.patience) and self.patience >= 1):
            bad("patience", "a positive int")
        if not (is_num(self.validation_fraction) and 0 < self.validation_fraction < 1):
            bad("validation_fraction", "a number strictly between 0 and 1")
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            bad("early_stopping", "True or False")
        if self.precision not in PRECISIONS:
            bad("precision", " or ".join(repr(p) for p in PRECISIONS))
        check_device_name(self.device)
        self._hidden()  # raises for a bad hidden_sizes (mlp)
        self._dropout()  # raises for a bad dropout (mlp)

    # ---------------------------------------------------------------- fit
    def fit(self, X, y):
        """Fit on features ``X`` (array or lazy array, n_samples x n_features) and labels ``y``.

        Returns ``self``. Sets ``mean_``, ``scale_``, ``coefs_``, ``intercepts_``, ``classes_``,
        ``n_features_in_`` and the history ``n_epochs_``, ``best_epoch_``, ``loss_curve_``
        (mean training loss per epoch), ``validation_scores_`` (validation accuracy per epoch;
        empty without early stopping) and ``validation_loss_curve_``.
        """
        prep = self._prepare(X, y)
        with cpu_threads(prep.device, prep.macs):
            history = fit_one(self, prep)
        self.coefs_, self.intercepts_ = prep.net.export()
        for key, value in history.items():
            setattr(self, key, value)
        return self

    def _prepare(self, X, y) -> Prepared:
        """Everything a fit trains with: checked parameters, validated and standardised data
        (sets ``classes_``, ``n_features_in_``, ``mean_``, ``scale_``), the validation split,
        batch size and learning rate, the seeded generator and the initialised network."""
        torch = torch_module()
        self.check_params()
        device = head_device(self.device)
        Xmem, y_enc = self._validate_any_fit(X, y)
        if is_lazy(Xmem):
            Xmem = None
        n_features, n_classes = self.n_features_in_, len(self.classes_)
        seed = seed_from(self.random_state)
        val_idx = self._validation_split(y_enc, n_classes, seed)
        n_train = len(y_enc) - (0 if val_idx is None else len(val_idx))
        batch, lr = batch_and_lr(self.batch_size, float(self.lr), n_train)
        net, macs = self._make_net(seed, device, batch)
        amp_dtype = training_dtype(self.precision, device, macs)
        # the order of the rows has its own generator: the same seed gives every architecture
        # the same mini-batches (what lets a sweep train several of them side by side)
        gen = torch.Generator().manual_seed(seed + DATA_ORDER_SEED)
        plan = DataPlan(X, Xmem, y_enc, val_idx, n_features=n_features, batch_size=batch, device=device, gen=gen,
                        train_dtype=amp_dtype)
        self.mean_, self.scale_ = plan.mean, plan.scale
        epochs = planned_epochs(self.max_epochs, plan.steps_per_epoch(batch), self._auto_epochs)
        return Prepared(device, plan, gen, net, batch, lr, n_train, macs, amp_dtype, epochs, seed)

    def _make_net(self, seed: int, device, batch: int) -> tuple[Net, int]:
        """The initialised network (weights from ``seed``, dropout masks from ``seed + 1``) and
        the multiply-adds of one mini-batch's forward."""
        torch = torch_module()
        sizes = [self.n_features_in_, *self._hidden(), len(self.classes_)]
        net = Net(sizes, self._dropout(), device, torch.Generator().manual_seed(seed), seed)
        return net, batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))

    def _validation_split(self, y_enc: np.ndarray, n_classes: int, seed: int):
        """Sorted validation row indices (stratified), or None without early stopping."""
        if not self.early_stopping:
            return None
        n = len(y_enc)
        n_val = max(int(math.ceil(self.validation_fraction * n)), n_classes)
        if np.bincount(y_enc, minlength=n_classes).min() < 2 or n - n_val < n_classes:
            warnings.warn(
                f"{type(self).__name__}: {n} samples are too few for a stratified validation "
                f"split of {self.validation_fraction} over {n_classes} classes (every class "
                "needs 2 samples); early stopping is disabled, training runs every planned "
                "epoch (max_epochs). Pass early_stopping=False to silence this warning.",
                UserWarning,
                stacklevel=3,
            )
            return None
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        _, val_idx = next(splitter.split(np.zeros((n, 1)), y_enc))
        return np.sort(val_idx)

    # ---------------------------------------------------------------- predict
    def _decision(self, X: np.ndarray) -> np.ndarray:
        h = standardized_affine(X, self.mean_, self.scale_, self.coefs_[0], self.intercepts_[0])
        for w, b in zip(self.coefs_[1:], self.intercepts_[1:]):
            np.maximum(h, 0.0, out=h)
            h = h @ np.asarray(w, dtype=np.float64) + np.asarray(b, dtype=np.float64)
        return h

    # ---------------------------------------------------------------- state
    def get_state(self) -> dict[str, np.ndarray]:
        """Learned arrays; layer ``i`` as ``coefs_{i}`` (in x out) and ``intercepts_{i}``."""
        state = super().get_state()
        for i, (w, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            state[f"coefs_{i}"] = np.asarray(w)
            state[f"intercepts_{i}"] = np.asarray(b)
        return state

    @classmethod
    def from_state(cls, params: dict[str, Any], state: dict[str, np.ndarray]):
        head = super().from_state(params, state)
        n_layers = len(head._hidden()) + 1
        missing = [
            f"{kind}_{i}" for i in range(n_layers) for kind in ("coefs", "intercepts")
            if f"{kind}_{i}" not in state
        ]
        if missing:
            raise HeadError(
                f"state of a {cls.__name__} with {n_layers} layer(s) lacks "
                f"{', '.join(missing)}; expected the arrays written by get_state(); "
                "re-fit and re-save the head"
            )
        head.coefs_ = [np.asarray(state[f"coefs_{i}"]) for i in range(n_layers)]
        head.intercepts_ = [np.asarray(state[f"intercepts_{i}"]) for i in range(n_layers)]
        return head


_COMMON_DOC = """
    Training parameters: ``lr`` (AdamW learning rate), ``weight_decay`` (AdamW decoupled
    weight decay, not applied to biases), ``batch_size`` (rows per step; 'auto' = 256, 512 from
    16,384 training rows, 1,024 from 32,768, with ``lr`` then scaled by sqrt(batch / 256),
    Adam's usual rule, so ``lr`` stays the rate of a 256-row batch; an int is used as given, with ``lr`` as given),
    ``max_epochs`` (the epochs planned: an int, or 'auto' = at least 7 epochs and 240 steps
    for the mlp, 16 epochs and 480 steps for linear, at most 100 epochs), ``lr_schedule``
    ('cosine': the rate falls from ``lr`` to 0 along a half cosine over the planned steps;
    'constant': ``lr`` throughout), ``patience``
    (epochs without validation-accuracy improvement before stopping),
    ``validation_fraction``, ``early_stopping``, ``random_state`` (int seed; None draws
    one), ``device`` ('auto' = cuda if available else cpu), ``precision`` of the training
    products: 'float32', 'bfloat16' (autocast; weights, optimiser and loss stay float32) or
    'auto' = bfloat16 where the device computes it natively (AMX / AVX512-BF16 CPUs, recent
    GPUs) and a mini-batch is large enough to gain (``BF16_MIN_MACS``), else float32.
    Predictions are computed in float64 from the learned weights either way.
"""


@register_head("linear")
class LinearHead(_TorchHead):
    __doc__ = (
        "Linear probe: one ``nn.Linear``-style layer on standardised features.\n" + _COMMON_DOC
    )

    _default_grid = {"lr": [3e-4, 1e-3, 3e-3], "weight_decay": [1e-4, 1e-2]}
    #: the convex probe gains from more steps than the mlp needs, and its epochs are cheap
    _auto_epochs = (16, 480)

    #: parameters a sweep may vary and still train its whole grid at once (:meth:`fit_together`)
    together_params = ("lr", "weight_decay")

    @classmethod
    def fit_together(cls, heads: list, X, y) -> list:
        """Fit ``heads`` (differing only in ``together_params``) in one training run; each ends
        as its own ``fit`` would (up to float rounding). See :mod:`featcache.train.heads._torch_grid`."""
        return fit_linear_grid(heads, X, y)


@register_head("mlp")
class MLPHead(_TorchHead):
    __doc__ = (
        "MLP: standardise, then ``Linear -> ReLU -> Dropout`` per entry of ``hidden_sizes``"
        " (a tuple of widths; an int means one layer), then a linear output layer.\n"
        + _COMMON_DOC
    )

    _default_grid = {"hidden_sizes": [(256,), (512,), (1024,)], "dropout": [0.0, 0.2, 0.5]}

    #: parameters a sweep may vary and still train its whole grid at once (:meth:`fit_together`)
    together_params = ("hidden_sizes", "dropout")

    @classmethod
    def can_fit_together(cls, heads: list) -> bool:
        """True when :meth:`fit_together` can train ``heads`` as one network (one hidden layer each)."""
        return trains_together(heads)

    @classmethod
    def fit_together(cls, heads: list, X, y) -> list:
        """Fit ``heads`` (one hidden layer each, differing only in ``together_params``) in one
        training run; each ends as its own ``fit`` would (up to float rounding). See
        :mod:`featcache.train.heads._torch_mlp_grid`."""
        return fit_mlp_grid(heads, X, y)

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] = (512,),
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int | str = "auto",
        max_epochs: int | str = "auto",
        lr_schedule: str = "cosine",
        patience: int = 10,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        random_state=0,
        device: str = "auto",
        precision: str = "auto",
    ):
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        super().__init__(lr=lr, weight_decay=weight_decay, batch_size=batch_size, max_epochs=max_epochs,
                         lr_schedule=lr_schedule, patience=patience, validation_fraction=validation_fraction,
                         early_stopping=early_stopping, random_state=random_state, device=device,
                         precision=precision)

    def _hidden(self) -> tuple[int, ...]:
        sizes = self.hidden_sizes
        if isinstance(sizes, (int, np.integer)) and not isinstance(sizes, bool):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            sizes = None
        if sizes is None or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in sizes
        ):
            raise HeadInputError(
                f"MLPHead: hidden_sizes={self.hidden_sizes!r} is not valid; expected a tuple "
                "of positive ints such as (512,) or (512, 256); fix the hidden_sizes parameter"
            )
        return tuple(int(s) for s in sizes)

    def _dropout(self) -> float:
        p = self.dropout
        if isinstance(p, bool) or not isinstance(p, (int, float, np.number)) or not 0 <= p < 1:
            raise HeadInputError(
                f"MLPHead: dropout={p!r} is not valid; expected a number in [0, 1); "
                "fix the dropout parameter"
            )
        return float(p)
