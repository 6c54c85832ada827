"""Float32 blockwise L-BFGS for the objectives of ``LogisticRegression`` and ``LinearSVC``.

The objective is scikit-learn's, on standardised features ``(x - mean) / scale``::

    C * sum_i loss(x_i W + b, y_i) + 0.5 * ||W||^2   (+ 0.5 * ||b||^2 for the SVM)

with ``loss`` the multinomial (or, for two classes, binary) logistic loss, or the one-vs-rest
squared hinge of ``LinearSVC``. It is minimised, divided by ``C * n``, with scipy's L-BFGS-B
and scikit-learn's stopping rule (``gtol=tol``). The standardisation is folded into the
weights (``x W / scale - mean W / scale``), so the raw float32 matrix is used as it is: every
pass is two float32 matrix products per block of rows (forward, gradient), no standardised
or float64 copy of the matrix is made, and a lazy matrix is streamed from disk. The products
are numpy's, or torch's on large matrices (:data:`TORCH_MIN_MACS`), on the head's ``device``
(a GPU when there is one, for ``"auto"``: the matrix is copied there once, and each pass
sends only the parameters, the scores and their gradient across).
The parameter vector (``d * k`` numbers) and the sums across blocks are float64.
Several values of ``C`` are solved side by side by :func:`fit_linear_together`: one pass over
the data per round evaluates every solve still running, their weights side by side in each
product (a wider product costs far less than one pass each).

Threads: the optimiser's own vector work (L-BFGS-B's updates, the preconditioner's triangular
solves) runs on one BLAS thread and only the passes over the data use them all. A threaded
BLAS woken for those small level-1/2 calls right after a large matrix product costs more than
the call: on 2 cores, 24 ms instead of 1 ms per L-BFGS-B step, and the next product slows
down too (benchmarks/README.md, "Heads at scale").
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import ThreadpoolController

from featcache.train.heads._torch_train import products_device, shared_tensor, torch_cpu_products
from featcache.train.heads.base import fold_standardization
from featcache.train.heads.blocks import FeatureBlocks
from featcache.train.heads.lockstep import run_lockstep

LOSSES = ("logistic", "squared_hinge")


def row_max(Z: np.ndarray) -> np.ndarray:
    """``Z.max(axis=-1, keepdims=True)`` of scores with few columns, column by column: the same
    values, 4x faster (numpy's row-wise reduction over 10 columns: 3.1 ms for 51,000 rows)."""
    m = Z[..., 0].copy()
    for j in range(1, Z.shape[-1]):
        np.maximum(m, Z[..., j], out=m)
    return m[..., None]


# The losses take the scores of m models at once, ``Z`` of shape (rows, m, k) (k classes, or
# 1 score column for two classes), and return each model's summed loss (m,) in float64 and
# the gradient ``dZ`` (rows, m, k).

def multinomial_loss(Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax cross-entropy of logits ``Z`` (rows, m, k), labels ``y`` in 0..k-1."""
    rows = np.arange(len(y))
    Z = Z - row_max(Z)
    P = np.exp(Z)
    total = P.sum(axis=2, keepdims=True)
    loss = np.sum(np.log(total[..., 0], dtype=np.float64), axis=0) - np.sum(Z[rows, :, y], axis=0, dtype=np.float64)
    P /= total
    P[rows, :, y] -= 1.0
    return loss, P


def binary_logistic_loss(Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logistic loss of one score column per model ``Z`` (rows, m, 1), ``y`` in {0, 1}."""
    s = (2.0 * y - 1.0).astype(Z.dtype)[:, None, None]
    margin = s * Z
    loss = -np.sum(log_expit(margin), axis=(0, 2), dtype=np.float64)
    return loss, -s * expit(-margin)


def squared_hinge_loss(Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest squared hinge of scores ``Z`` (rows, m, k); with k = 1, ``y`` in {0, 1}."""
    if Z.shape[2] == 1:
        S = (2.0 * y - 1.0).astype(Z.dtype)[:, None, None]
    else:
        S = np.full((len(y), 1, Z.shape[2]), -1.0, dtype=Z.dtype)
        S[np.arange(len(y)), 0, y] = 1.0
    slack = np.maximum(1.0 - S * Z, 0.0)
    return np.sum(slack * slack, axis=(0, 2), dtype=np.float64), -2.0 * S * slack


#: Passes of at least this many multiply-adds (rows x features x score columns) make their two
#: products with torch (oneDNN, MKL) instead of numpy (OpenBLAS): on 2 Xeon cores, 51,000 x 1,280
#: x 10 takes 34 ms a pass (42 ms with MKL's scores) instead of 70 ms. Below it, a fit is too
#: short to pay for importing torch (2.5 s) when nothing else has. On the CPU of an x86 machine
#: not made by Intel (:func:`~featcache.train.heads._torch_train.numpy_gemm`) the CPU's passes
#: stay numpy's at any size: on a 2-core AMD EPYC the pass takes the same time either way, and
#: a fit in a fresh process saves the import (svm, 51,000 rows: 8.0 against 10.9 s).
TORCH_MIN_MACS = 256 * 2**20
#: Rows per torch product over an in-memory matrix: at most this many scores (rows x columns).
TORCH_BLOCK_SCORES = 2**22


#: Rows per numpy product: a slice of 1,024 rows (5 MB at 1,280 features) is still in the cache
#: when the gradient's product reads it again after the scores'. On a 2-core AMD EPYC a fit on
#: 51,000 x 1,280 Fashion-MNIST features took 20-25 % less time than with the 4,096-row blocks
#: of the matrix (logreg median 11.8 -> 9.5 s, svm 9.0 -> 6.8 s; benchmarks/README.md, session 17).
NUMPY_PASS_ROWS = 1024


class NumpyProducts:
    """The two float32 products of a pass, with numpy, on slices of NUMPY_PASS_ROWS rows."""

    def operands(self, blocks: FeatureBlocks):
        """``(start, stop, block)`` of a pass, the block as the products take it."""
        for start, stop, block in blocks:
            for a in range(0, stop - start, NUMPY_PASS_ROWS):
                yield start + a, min(stop, start + a + NUMPY_PASS_ROWS), block[a : a + NUMPY_PASS_ROWS]

    def scores(self, block: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        return block @ W + b

    def gradient(self, block: np.ndarray, G: np.ndarray) -> np.ndarray:
        return block.T @ G


def onednn_linear(torch):
    """torch's oneDNN fully-connected kernel (``x @ w.T + b``), or None where torch lacks it.

    For the scores of a pass (a tall float32 matrix times a few columns) it is 1.5x faster than
    ``addmm`` (MKL) on CPUs with AVX-512 (51,000 x 1,280 x 10 on 2 cores: 12 ms against 18 ms);
    the same float32 product up to rounding. It is the kernel torch's own compiler calls for
    ``nn.Linear`` on the CPU; the gradient's product (``G.T @ X``) has no faster form in it.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


class TorchProducts:
    """The same products with torch on ``device``.

    On the CPU the arrays are shared with torch (no copies). On a GPU an in-memory matrix is
    copied there once, at the first pass, and a lazy one block by block at every pass; only
    the parameters, the (rows x classes) scores and their gradient cross between the devices.
    """

    def __init__(self, device):
        import torch  # only for matrices of TORCH_MIN_MACS and more, or a GPU

        self.torch, self.device = torch, device
        self._resident = None  # the in-memory blocks on the GPU
        self._linear = onednn_linear(torch) if device.type == "cpu" else None

    def operands(self, blocks: FeatureBlocks):
        if self.device.type == "cpu":
            return ((start, stop, shared_tensor(block)) for start, stop, block in blocks)
        if blocks.lazy:
            return ((start, stop, self._tensor(block)) for start, stop, block in blocks)
        if self._resident is None:
            self._resident = [(start, stop, self._tensor(block)) for start, stop, block in blocks]
        return iter(self._resident)

    def _tensor(self, a: np.ndarray):
        return shared_tensor(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)

    def scores(self, block, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self._linear is not None:
            try:
                return self._linear(block, self._tensor(W).t(), self._tensor(b), "none", [], "").numpy()
            except RuntimeError:  # a build whose oneDNN refuses the shape: MKL from now on
                self._linear = None
        return self.torch.addmm(self._tensor(b), block, self._tensor(W)).cpu().numpy()

    def gradient(self, block, G: np.ndarray) -> np.ndarray:
        return (self._tensor(G).t() @ block).cpu().numpy().T  # G.T @ X: faster than X.T @ G


@dataclass
class LinearFit:
    """Solution in standardised space: ``coef`` (k, d), ``intercept`` (k,), iterations."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int
    converged: bool
    factor: np.ndarray | None = None  # the preconditioner used (reusable on the same matrix)


class LinearObjective:
    """Value and gradient of the scaled objective over the blocks of a feature matrix."""

    def __init__(self, blocks: FeatureBlocks, y: np.ndarray, n_classes: int, *, loss: str,
                 C: float, mean: np.ndarray, scale: np.ndarray, device: str = "auto"):
        self.y = np.asarray(y, dtype=np.int64)
        self.pass_threads = contextlib.nullcontext  # fit_linear: all BLAS threads (module doc)
        self.k = 1 if n_classes == 2 else n_classes
        self.d = blocks.n_features
        self.products = NumpyProducts()
        torch_device = products_device(device, blocks.n * self.d * self.k, TORCH_MIN_MACS, cpu=torch_cpu_products())
        if torch_device is not None:
            self.products = TorchProducts(torch_device)
            if not blocks.lazy:  # torch runs large products fastest: fewer, taller blocks
                blocks = FeatureBlocks(blocks.X, self.d, rows=max(blocks.rows, TORCH_BLOCK_SCORES // self.k))
        self.blocks = blocks
        self.loss_fn = {
            "logistic": multinomial_loss if self.k > 1 else binary_logistic_loss,
            "squared_hinge": squared_hinge_loss,
        }[loss]
        self.penalize_intercept = loss == "squared_hinge"  # LinearSVC: intercept_scaling=1
        self.mean, self.scale = mean, scale
        self.alpha = self.penalty_weight(C)  # penalty weight of the mean loss
        self.calls = 0

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        W = theta[: self.d * self.k].reshape(self.d, self.k)
        return W, theta[self.d * self.k :]

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        return self.evaluate([theta], [self.alpha])[0]

    def penalty_weight(self, C: float) -> float:
        """The weight of the penalty in the mean loss for ``C`` (``alpha`` is that of this ``C``)."""
        return 1.0 / (float(C) * len(self.y))

    def evaluate(self, thetas: list[np.ndarray], alphas: list[float]) -> list[tuple[float, np.ndarray]]:
        """Value and gradient at each of ``thetas``, each with its own penalty weight, from one
        pass over the data: the models' weights side by side in each product."""
        with self.pass_threads():
            return self._evaluate_many(thetas, alphas)

    def _evaluate_many(self, thetas: list[np.ndarray], alphas: list[float]) -> list[tuple[float, np.ndarray]]:
        self.calls += 1
        m, d, k = len(thetas), self.d, self.k
        params = [self.unpack(theta) for theta in thetas]
        folded = [fold_standardization(W, b, self.mean, self.scale) for W, b in params]
        W_raw = np.concatenate([W for W, _ in folded], axis=1).astype(np.float32)  # (d, m * k)
        b_raw = np.concatenate([b for _, b in folded]).astype(np.float32)
        loss, gW, gb = np.zeros(m), np.zeros((d, m * k)), np.zeros(m * k)
        for start, stop, block in self.products.operands(self.blocks):
            Z = self.products.scores(block, W_raw, b_raw)
            block_loss, G = self.loss_fn(Z.reshape(len(Z), m, k), self.y[start:stop])
            G = G.reshape(len(Z), m * k)
            loss += block_loss
            gW += self.products.gradient(block, G.astype(np.float32, copy=False))
            gb += G.sum(axis=0, dtype=np.float64)
        n = len(self.y)
        gW = (gW - np.outer(self.mean, gb)) / self.scale[:, None]
        out = []
        for (W, b), alpha, gW_j, gb_j, loss_j in zip(params, alphas, column_blocks(gW, k), gb.reshape(m, k), loss):
            penalty = float(W.ravel() @ W.ravel()) + (float(b @ b) if self.penalize_intercept else 0.0)
            grad_b = gb_j / n + (alpha * b if self.penalize_intercept else 0.0)
            value = float(loss_j) / n + 0.5 * alpha * penalty
            out.append((value, np.concatenate([(gW_j / n + alpha * W).ravel(), grad_b])))
        return out


def side_by_side(thetas: list[np.ndarray], d: int, k: int) -> np.ndarray:
    """The (d, k) weight matrices of parameter vectors ``thetas`` side by side: (d, m * k)."""
    return np.concatenate([theta[: d * k].reshape(d, k) for theta in thetas], axis=1)


def column_blocks(M: np.ndarray, k: int) -> list[np.ndarray]:
    """The m (rows, k) column blocks of ``M`` (rows, m * k), one per model: views."""
    return [M[:, j * k : (j + 1) * k] for j in range(M.shape[1] // k)]


#: Rows sampled (evenly, from every block) for the preconditioner's covariance.
PRECONDITION_ROWS = 4096
#: Ridge added to that covariance, relative to its trace (keeps the factor well conditioned).
PRECONDITION_RIDGE = 1e-3


def covariance_factor(objective: LinearObjective) -> np.ndarray | None:
    """Lower Cholesky factor ``L`` of the standardised features' covariance (sampled) plus a
    ridge, or None when the matrix has too few rows for it to pay (n < 4 d)."""
    blocks, d = objective.blocks, objective.d
    if blocks.n < 4 * d:
        return None
    stride = max(1, blocks.n // PRECONDITION_ROWS)
    sample = np.concatenate([block[(-start) % stride :: stride] for start, _, block in blocks])
    sample = (sample - objective.mean.astype(np.float32)) / objective.scale.astype(np.float32)
    cov = (sample.T @ sample).astype(np.float64) / len(sample)
    cov[np.diag_indices(d)] += PRECONDITION_RIDGE * np.trace(cov)
    return cholesky(cov, lower=True)


class Preconditioned:
    """The objective in coordinates ``V = L^T W`` (whitened features, Hessian ~ identity).

    Gives the largest entry of the gradient in the original coordinates with each value: it
    is the stopping rule (scikit-learn's ``gtol``), so the answer meets the same criterion as
    without the preconditioner. Several points go through one pair of triangular solves.
    """

    def __init__(self, objective: LinearObjective, factor: np.ndarray):
        self.objective, self.L = objective, factor
        self.d, self.k = objective.d, objective.k
        self.dk = objective.d * objective.k
        self.max_grad = np.inf

    def to_thetas(self, vs: list[np.ndarray]) -> list[np.ndarray]:
        W = solve_triangular(self.L, side_by_side(vs, self.d, self.k), lower=True, trans="T", check_finite=False)
        return [np.concatenate([W_j.ravel(), v[self.dk :]]) for W_j, v in zip(column_blocks(W, self.k), vs)]

    def to_theta(self, v: np.ndarray) -> np.ndarray:
        return self.to_thetas([v])[0]

    def from_theta(self, theta: np.ndarray) -> np.ndarray:
        W = theta[: self.dk].reshape(self.d, self.k)
        return np.concatenate([(self.L.T @ W).ravel(), theta[self.dk :]])

    def evaluate(self, vs: list[np.ndarray], alphas: list[float]) -> list[tuple[float, np.ndarray, float]]:
        """``(value, gradient in V, largest entry of the gradient in W)`` at each of ``vs``."""
        values = self.objective.evaluate(self.to_thetas(vs), alphas)
        G = side_by_side([g for _, g in values], self.d, self.k)
        GV = solve_triangular(self.L, G, lower=True, check_finite=False)
        return [(value, np.concatenate([GV_j.ravel(), g[self.dk :]]), float(np.max(np.abs(g))))
                for GV_j, (value, g) in zip(column_blocks(GV, self.k), values)]

    def __call__(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        value, gv, self.max_grad = self.evaluate([v], [self.objective.alpha])[0]
        return value, gv


@contextlib.contextmanager
def blas_split(objective: LinearObjective):
    """One BLAS thread for the optimiser, all of them inside ``objective``'s data passes."""
    controller = ThreadpoolController().select(user_api="blas")
    threads = max((lib.num_threads for lib in controller.lib_controllers), default=1)
    if not isinstance(objective.products, TorchProducts):  # torch's products use torch's threads:
        objective.pass_threads = lambda: controller.limit(limits=threads)  # idle BLAS threads slow them 2x
    try:
        with controller.limit(limits=1):
            yield
    finally:
        objective.pass_threads = contextlib.nullcontext


#: Most (s, y) pairs L-BFGS keeps: on CNN features 100 instead of scipy's 10 takes 30 % fewer
#: passes over the data (logreg on 51,000 x 1,280 Fashion-MNIST features: 80 vs 116), and 200
#: instead of 100 takes 11 % fewer on the solves that need more than 100 iterations (svm,
#: C=0.1: 151 vs 170; solves of up to 100 iterations never fill the history: the same passes).
MAX_HISTORY = 200
#: Memory the L-BFGS history may hold (two float64 vectors per pair).
HISTORY_BYTES = 64 * 2**20


def history_size(n_params: int) -> int:
    """Pairs of L-BFGS history for ``n_params`` parameters: up to MAX_HISTORY, within HISTORY_BYTES."""
    return int(min(MAX_HISTORY, max(10, HISTORY_BYTES // (16 * max(n_params, 1)))))


def fit_linear(objective: LinearObjective, *, max_iter: int, tol: float,
               init: tuple[np.ndarray, np.ndarray] | None = None, who: str = "head",
               factor: np.ndarray | None = None) -> LinearFit:
    """Minimise ``objective`` with L-BFGS-B from ``init`` (coef (k, d), intercept (k,)) or 0.

    With many more rows than features the problem is solved in whitened coordinates
    (:class:`Preconditioned`: 2-4x fewer passes over the data on CNN features), stopping
    when the largest entry of the original gradient is at most ``tol``. ``factor``: the
    :func:`covariance_factor` of an earlier fit on the same matrix and statistics (a path's
    previous point; it depends on neither ``C`` nor the loss), computed here when None. Warns
    with ``ConvergenceWarning`` when ``max_iter`` iterations were not enough.
    """
    if factor is None:
        factor = covariance_factor(objective)
    d, k = objective.d, objective.k
    theta = np.zeros(d * k + k)
    if init is not None and np.shape(init[0]) == (k, d) and np.shape(init[1]) == (k,):
        theta[: d * k] = np.asarray(init[0], dtype=np.float64).T.ravel()
        theta[d * k :] = init[1]
    pre = None if factor is None else Preconditioned(objective, factor)
    with blas_split(objective):
        solved = _lbfgs(objective if pre is None else pre, theta if pre is None else pre.from_theta(theta),
                        whitened=pre is not None, max_iter=max_iter, tol=tol)
    return _finish(objective, pre, solved, factor, max_iter=max_iter, who=who)


def fit_linear_together(objective: LinearObjective, Cs: list[float], *, max_iter: int, tol: float,
                        who: str = "head") -> list[LinearFit]:
    """Minimise ``objective`` for each of ``Cs`` (from 0), the solves side by side: one pass over
    the data evaluates every solve still running (:func:`~featcache.train.heads.lockstep.run_lockstep`).

    Each solve is that of :func:`fit_linear` with its own ``C``: the same L-BFGS, preconditioner
    (computed once) and stopping rule; its iterates differ from a separate fit's by float
    rounding only (wider products). Warns with ``ConvergenceWarning`` for each ``C`` whose
    ``max_iter`` iterations were not enough.
    """
    factor = covariance_factor(objective)
    pre = None if factor is None else Preconditioned(objective, factor)
    alphas = [objective.penalty_weight(C) for C in Cs]
    x0 = np.zeros(objective.d * objective.k + objective.k)

    def evaluate(batch):
        points, weights = [x for _, x in batch], [alphas[i] for i, _ in batch]
        if pre is None:
            return [(value, g, np.inf) for value, g in objective.evaluate(points, weights)]
        return pre.evaluate(points, weights)

    def solve(fun):
        return _lbfgs(_Member(fun), x0, whitened=pre is not None, max_iter=max_iter, tol=tol)

    with blas_split(objective):
        solved = run_lockstep([solve] * len(Cs), evaluate)
    fits = []
    for one, C in zip(solved, Cs):
        fits.append(_finish(objective, pre, one, factor, max_iter=max_iter, who=f"{who} (C={C:g})"))
    return fits


class _Member:
    """One solve of :func:`fit_linear_together`: values (and the stopping rule's largest
    gradient entry) from ``fun``, a round of the lockstep."""

    def __init__(self, fun):
        self.fun, self.max_grad = fun, np.inf

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        value, g, self.max_grad = self.fun(x)
        return value, g


@dataclass
class _Solved:
    """What :func:`_lbfgs` leaves for :func:`_finish`."""

    x: np.ndarray
    n_iter: int
    converged: bool
    out_of_iterations: bool


def _lbfgs(fun, x0: np.ndarray, *, whitened: bool, max_iter: int, tol: float) -> _Solved:
    """scipy's L-BFGS-B on ``fun`` from ``x0``; ``whitened``: stop by ``fun.max_grad`` (the
    original gradient's largest entry, :class:`Preconditioned`) instead of scipy's ``gtol``."""
    options = {"maxiter": int(max_iter), "maxls": 50, "maxcor": history_size(x0.size),
               "gtol": float(tol), "ftol": 64 * np.finfo(float).eps}
    callback = None
    if whitened:
        options["gtol"] = 0.0  # the rule is on the original gradient, checked below

        def callback(intermediate_result):
            if fun.max_grad <= tol:
                raise StopIteration

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", callback=callback, options=options)
    converged = res.status == 0 or (whitened and fun.max_grad <= tol)
    return _Solved(res.x, int(res.nit), bool(converged), int(res.nit) >= int(max_iter))


def _finish(objective: LinearObjective, pre: Preconditioned | None, solved: _Solved,
            factor: np.ndarray | None, *, max_iter: int, who: str) -> LinearFit:
    if not solved.converged and solved.out_of_iterations:
        warnings.warn(
            f"{who}: L-BFGS did not converge in max_iter={max_iter} iterations; increase "
            "max_iter, or raise the regularisation (smaller C)", ConvergenceWarning, stacklevel=4)
    W, b = objective.unpack(solved.x if pre is None else pre.to_theta(solved.x))
    return LinearFit(np.ascontiguousarray(W.T), np.asarray(b, dtype=np.float64).copy(),
                     solved.n_iter, solved.converged, factor)
