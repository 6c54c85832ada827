"""Heads at scale: blockwise float32 solvers, streamed (lazy) training, warm-started paths."""
from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

import featcache.train.heads._torch_train as torch_train
import featcache.train.heads.base as heads_base
import featcache.train.heads.blocks as blocks_mod
import featcache.train.heads.sklearn_heads as sklearn_heads
import featcache.train.heads.solvers as solvers
from featcache.errors import FeatcacheError, HeadError
from featcache.train.heads import make_head
from featcache.train.heads.blocks import FeatureBlocks, chunk_rows, column_stats
from featcache.train.heads.neighbors import top_k_cosine, vote
from featcache.train.heads.lockstep import run_lockstep
from featcache.train.heads.sklearn_heads import LogRegHead, SVMHead
from featcache.train.persist import load_head
from featcache.train.sweeps import _grid_combinations as sweep_combinations
from featcache.train.sweeps import path_order, sweep

OLD_FILES = Path(__file__).parent / "data" / "heads_before_blockwise"


@pytest.fixture(scope="module")
def data():
    """5 overlapping classes in 40 dims, float32: 900 training rows, 600 test rows."""
    X, y = make_blobs(n_samples=1500, n_features=40, centers=5, cluster_std=9.0, random_state=3)
    X = (X + 5.0).astype(np.float32)  # not centred: the folded standardisation must cope
    return train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)


class RowLimitedArray:
    """An h5py dataset that refuses to be read whole (reads of at most ``max_rows`` rows)."""

    def __init__(self, dataset, max_rows: int):
        self.dataset, self.max_rows, self.reads = dataset, max_rows, 0
        self.shape, self.dtype, self.ndim = dataset.shape, dataset.dtype, 2

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        assert isinstance(key, slice), key
        assert len(range(*key.indices(self.shape[0]))) <= self.max_rows
        self.reads += 1
        return self.dataset[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("np.asarray() on the whole dataset")


# ----------------------------------------------------------------- same answer as scikit-learn
@pytest.mark.parametrize("name", ["logreg", "svm"])
@pytest.mark.parametrize("n_classes", [2, 5])
@pytest.mark.parametrize("products", ["numpy", "torch"])
def test_blockwise_solver_matches_scikit_learn(name, n_classes, products, data):
    X_train, X_test, y_train, y_test = data
    keep, keep_test = y_train < n_classes, y_test < n_classes
    heads = {}
    for solver, limit in (("sklearn", 10**12), ("blockwise", 0)):
        with warnings.catch_warnings(), pytest.MonkeyPatch.context() as mp:
            warnings.simplefilter("ignore", ConvergenceWarning)
            mp.setattr(sklearn_heads, "SKLEARN_MAX_MACS", limit)
            mp.setattr(solvers, "TORCH_MIN_MACS", 0 if products == "torch" else 10**15)
            mp.setattr(torch_train, "x86_non_intel", lambda: False)  # torch's products on any CPU
            heads[solver] = make_head(name, C=0.1).fit(X_train[keep], y_train[keep])
    ref, ours = heads["sklearn"], heads["blockwise"]
    assert ours.coef_.shape == ref.coef_.shape and ours.intercept_.shape == ref.intercept_.shape
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-2 * np.abs(ref.coef_).max())
    agree = np.mean(ours.predict(X_test[keep_test]) == ref.predict(X_test[keep_test]))
    assert agree >= 0.99
    assert ours.mean_.dtype == np.float64 and ours.coef_.dtype == np.float64


def test_solver_rule(data, tmp_path, monkeypatch):
    X_train = data[0]
    assert sklearn_heads.uses_sklearn_solver(X_train, 5)  # 900 x 40 x 5: scikit-learn
    monkeypatch.setattr(sklearn_heads, "SKLEARN_MAX_MACS", 1000)
    assert not sklearn_heads.uses_sklearn_solver(X_train, 5)
    monkeypatch.setattr(sklearn_heads, "SKLEARN_MAX_MACS", 10**12)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["x"] = X_train
        assert not sklearn_heads.uses_sklearn_solver(f["x"], 5)  # lazy: always streamed


@pytest.fixture
def blockwise(monkeypatch):
    """logreg and svm use the blockwise solver whatever the shape."""
    monkeypatch.setattr(sklearn_heads, "SKLEARN_MAX_MACS", 0)


@pytest.mark.parametrize("intel", [True, False], ids=["intel", "amd"])
def test_large_passes_use_torch_products_on_the_same_objective(data, monkeypatch, intel):
    """From TORCH_MIN_MACS on, torch's products, except on the CPU of an x86 machine not made
    by Intel: there numpy's at any size (as fast, and no torch to import)."""
    monkeypatch.setattr(torch_train, "x86_non_intel", lambda: not intel)
    X_train, _, y_train, _ = data
    X_train = X_train.copy()
    X_train.flags.writeable = False  # read-only input is fine: torch only reads it
    mean, scale = column_stats(FeatureBlocks(X_train, X_train.shape[1]))

    def objective():
        return solvers.LinearObjective(FeatureBlocks(X_train, X_train.shape[1]), y_train, 5, loss="logistic",
                                       C=0.5, mean=mean, scale=scale)

    small = objective()
    assert isinstance(small.products, solvers.NumpyProducts)
    monkeypatch.setattr(solvers, "TORCH_MIN_MACS", X_train.size * 5)  # exactly this size: torch
    large = objective()
    if not intel:
        assert isinstance(large.products, solvers.NumpyProducts)
        return
    assert isinstance(large.products, solvers.TorchProducts)
    assert large.blocks.rows >= len(X_train)  # one tall block instead of 4,096-row ones
    theta = np.random.default_rng(0).normal(size=X_train.shape[1] * 5 + 5) * 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about the read-only array
        value, grad = large(theta)
    ref_value, ref_grad = small(theta)
    assert value == pytest.approx(ref_value, rel=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())


@pytest.mark.parametrize("machine,vendor,numpy_gemm", [
    ("x86_64", "AuthenticAMD", True), ("x86_64", "HygonGenuine", True), ("x86_64", "GenuineIntel", False),
    ("x86_64", None, False), ("aarch64", None, False)])
def test_numpy_multiplies_for_torch_on_x86_cpus_not_made_by_intel(monkeypatch, machine, vendor, numpy_gemm):
    """The rule of :func:`numpy_gemm`: the CPU's vendor from /proc/cpuinfo, never a timing."""
    import platform

    from featcache import environment

    info = f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu avx2\n" if vendor else "processor\t: 0\n"
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert environment.cpuinfo_field("vendor_id", info) == (vendor or "")
    assert environment.x86_non_intel(info) is numpy_gemm
    monkeypatch.setattr(environment, "cpuinfo", lambda: info)
    assert torch_train.numpy_gemm(type("Device", (), {"type": "cpu"})()) is numpy_gemm
    assert torch_train.numpy_gemm(type("Device", (), {"type": "cuda"})()) is False


def test_numpy_passes_slice_blocks_to_cache_sized_views(data, monkeypatch):
    """numpy's products take NUMPY_PASS_ROWS rows at a time, views of each block covering all
    its rows in order; the objective is that of one product over the whole matrix."""
    X_train, _, y_train, _ = data
    monkeypatch.setattr(solvers, "NUMPY_PASS_ROWS", 128)
    blocks = FeatureBlocks(X_train, X_train.shape[1], rows=500)
    slices = list(solvers.NumpyProducts().operands(blocks))
    assert [(a, b) for a, b, _ in slices] == [(0, 128), (128, 256), (256, 384), (384, 500), (500, 628),
                                              (628, 756), (756, 884), (884, 900)]
    for start, stop, block in slices:
        assert block.base is X_train and block.shape == (stop - start, X_train.shape[1])
        np.testing.assert_array_equal(block, X_train[start:stop])
    mean, scale = column_stats(blocks)
    theta = np.random.default_rng(0).normal(size=X_train.shape[1] * 5 + 5) * 0.1
    sliced = solvers.LinearObjective(blocks, y_train, 5, loss="logistic", C=0.5, mean=mean, scale=scale)(theta)
    monkeypatch.setattr(solvers, "NUMPY_PASS_ROWS", len(X_train))
    whole = solvers.LinearObjective(blocks, y_train, 5, loss="logistic", C=0.5, mean=mean, scale=scale)(theta)
    assert sliced[0] == pytest.approx(whole[0], rel=1e-6)
    np.testing.assert_allclose(sliced[1], whole[1], rtol=1e-4, atol=1e-6 * np.abs(whole[1]).max())


@pytest.mark.parametrize("k", [1, 5])
def test_torch_scores_use_onednn_and_fall_back_to_mkl(data, k):
    torch = pytest.importorskip("torch")
    X = data[0]
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(X.shape[1], k)).astype(np.float32), rng.normal(size=k).astype(np.float32)
    products = solvers.TorchProducts(torch.device("cpu"))
    if torch.backends.mkldnn.is_available():
        assert products._linear is not None
    (_, _, block), = products.operands(FeatureBlocks(X, X.shape[1], rows=len(X)))
    ref = X.astype(np.float64) @ W + b
    np.testing.assert_allclose(products.scores(block, W, b), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())

    def refuses(*args):
        raise RuntimeError("oneDNN: unsupported shape")

    products._linear = refuses  # a build whose kernel refuses: MKL's addmm, and from then on
    np.testing.assert_allclose(products.scores(block, W, b), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert products._linear is None


def test_blockwise_fit_makes_no_copy_of_a_float32_matrix(data):
    X_train = data[0]
    blocks = FeatureBlocks(X_train, X_train.shape[1])
    assert blocks.X is X_train
    assert all(np.shares_memory(block, X_train) for _, _, block in blocks)
    mean, scale = column_stats(FeatureBlocks(X_train.astype(np.float64), X_train.shape[1], rows=7))
    np.testing.assert_allclose(mean, X_train.mean(axis=0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(scale, X_train.std(axis=0, dtype=np.float64), rtol=1e-5)


@pytest.mark.parametrize("rows", [7, 64, 10**6])
def test_column_stats_are_the_same_on_any_number_of_cores(data, monkeypatch, rows):
    from featcache.train.heads import blocks as blocks_module

    X = data[0]
    blocks = FeatureBlocks(X, X.shape[1], rows=rows)
    results = []
    for cores in (1, 2, 5):
        monkeypatch.setattr(blocks_module, "usable_cores", lambda: cores)
        results.append(column_stats(blocks))
    for mean, scale in results[1:]:  # the same parts merged in the same order: the same bits
        assert np.array_equal(mean, results[0][0]) and np.array_equal(scale, results[0][1])
    exact = X.astype(np.float64)
    np.testing.assert_allclose(results[0][0], exact.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[0][1], exact.std(axis=0), rtol=1e-12)


# ----------------------------------------------------------------- streamed from disk
@pytest.mark.parametrize("name", ["logreg", "svm", "knn", "ncm"])
def test_every_sklearn_style_head_trains_from_disk_in_blocks(name, data, tmp_path, monkeypatch, blockwise):
    X_train, X_test, y_train, y_test = data
    monkeypatch.setattr(heads_base, "BLOCK_BYTES", 100 * 40 * 4)  # blocks of 100 rows
    params = {}
    in_memory = make_head(name, **params).fit(X_train, y_train)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["x"] = X_train
    with h5py.File(tmp_path / "f.h5", "r") as f:
        lazy = RowLimitedArray(f["x"], max_rows=100)
        head = make_head(name, **params).fit(lazy, y_train)
        assert lazy.reads >= 9
    np.testing.assert_allclose(head.predict_proba(X_test), in_memory.predict_proba(X_test),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["logreg", "linear"])
def test_lazy_blocks_are_looked_at_for_nan_once(name, data, tmp_path, monkeypatch, blockwise):
    """Every pass reads the blocks again; only the first looks for NaN/inf in them."""
    X_train, _, y_train, _ = data
    monkeypatch.setattr(heads_base, "BLOCK_BYTES", 100 * 40 * 4)  # blocks of 100 rows
    checked = []
    real = heads_base.check_finite
    monkeypatch.setattr(heads_base, "check_finite", lambda X, **kw: checked.append(kw.get("offset")) or real(X, **kw))
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["x"] = X_train
    with h5py.File(tmp_path / "f.h5", "r") as f:
        lazy = RowLimitedArray(f["x"], max_rows=256)
        (make_head(name, max_iter=50) if name == "logreg" else make_head(name, max_epochs=3)).fit(lazy, y_train)
    assert len(checked) >= 4 and len(set(checked)) == len(checked)  # each block once
    assert lazy.reads > 2 * len(checked)  # over several passes


def test_row_subset_reads_spans_into_one_buffer_and_returns_fresh_rows(tmp_path):
    from featcache.train.fitting import RowSubset

    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 7)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["x"] = X
    with h5py.File(tmp_path / "f.h5", "r") as f:
        idx = np.sort(rng.choice(1000, 700, replace=False))
        rows = RowSubset(f["x"], idx)
        first, second, picked = rows[0:300], rows[300:700], rows[np.array([0, 5, 699])]
        buffer = rows._span
        third = rows[100:400]
        assert rows._span is buffer  # one buffer for every span
        # the rows handed out earlier are their own arrays, not views of the buffer
        np.testing.assert_array_equal(first, X[idx[:300]])
        np.testing.assert_array_equal(second, X[idx[300:]])
        np.testing.assert_array_equal(picked, X[idx[[0, 5, 699]]])
        np.testing.assert_array_equal(third, X[idx[100:400]])
        sparse = RowSubset(f["x"], np.array([1, 500, 999]))  # far apart: read row by row
        np.testing.assert_array_equal(sparse[0:3], X[[1, 500, 999]])
    np.testing.assert_array_equal(RowSubset(X, idx)[10:20], X[idx[10:20]])  # a numpy array


def test_knn_predicts_lazy_blocks_with_one_index(data, tmp_path, monkeypatch):
    """Query blocks read from disk share one search index (the bfloat16 training matrix is
    built once per prediction, not once per block), with the neighbours of one whole search."""
    import featcache.train.heads.neighbors as neighbors_mod

    X_train, X_test, y_train, _ = data
    monkeypatch.setattr(neighbors_mod, "TORCH_MIN_WORK", 0)
    monkeypatch.setattr(heads_base, "BLOCK_BYTES", 100 * 40 * 4)  # blocks of 100 rows
    head = make_head("knn", n_neighbors=7).fit(X_train, y_train)
    whole = head.predict_proba(X_test)
    builds = []
    real = neighbors_mod._torch_candidates
    monkeypatch.setattr(neighbors_mod, "_torch_candidates", lambda *a: builds.append(1) or real(*a))
    with h5py.File(tmp_path / "q.h5", "w") as f:
        f["x"] = X_test
    with h5py.File(tmp_path / "q.h5", "r") as f:
        head._last_query_ = {}
        lazy = RowLimitedArray(f["x"], max_rows=100)
        np.testing.assert_array_equal(head.predict_proba(lazy), whole)
        assert lazy.reads >= 6 and builds == [1]


def test_lazy_training_matrix_with_nan_is_refused(data, tmp_path):
    X_train, _, y_train, _ = data
    bad = X_train.copy()
    bad[700, 3] = np.inf
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["x"] = bad
    with h5py.File(tmp_path / "bad.h5", "r") as f:
        for name in ("logreg", "knn", "ncm"):
            with pytest.raises(HeadError, match=r"inf values.*row 700"):
                make_head(name).fit(f["x"], y_train)


# ----------------------------------------------------------------- neighbours
@pytest.mark.parametrize("search", ["numpy", "torch", "torch-float32", "torch-float32-openblas"])
@pytest.mark.parametrize("margin", [32, 0])
def test_top_k_cosine_is_exact_and_independent_of_chunks(data, monkeypatch, search, margin):
    import featcache.train.heads.neighbors as neighbors_mod

    monkeypatch.setattr(neighbors_mod, "TORCH_MIN_WORK", 10**30 if search == "numpy" else 0)
    monkeypatch.setattr(neighbors_mod, "_native_bf16", lambda device: search == "torch")
    monkeypatch.setattr(torch_train, "x86_non_intel", lambda: search.endswith("openblas"))
    monkeypatch.setattr(neighbors_mod, "RERANK_MARGIN", margin)  # 0: rows must widen their search
    torch_products = []
    if search != "numpy":
        import torch

        real = torch.Tensor.__matmul__
        monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: torch_products.append(1) or real(a, b))
    X_train, X_test, _, _ = data
    train = X_train / np.linalg.norm(X_train, axis=1, keepdims=True)
    queries = X_test / np.linalg.norm(X_test, axis=1, keepdims=True)
    idx, sims = top_k_cosine(queries, train, 7)
    assert bool(torch_products) is (search in ("torch", "torch-float32"))  # openblas: numpy's product
    brute = queries.astype(np.float64) @ train.T.astype(np.float64)
    np.testing.assert_array_equal(idx, np.argsort(-brute, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(sims, np.take_along_axis(brute, idx, axis=1), rtol=1e-12)
    monkeypatch.setattr(blocks_mod, "MAX_CHUNK_BYTES", 1)  # one chunk of the least rows
    assert chunk_rows(10**6, least=3) == 3
    idx_small, _ = top_k_cosine(queries, train, 7)
    np.testing.assert_array_equal(idx_small, idx)
    np.testing.assert_array_equal(top_k_cosine(queries[5:6], train, 7)[0], idx[5:6])
    monkeypatch.setattr(neighbors_mod, "RERANK_BYTES", 1)  # one row, one candidate at a time
    np.testing.assert_array_equal(top_k_cosine(queries[:9], train, 7)[0], idx[:9])


@pytest.mark.parametrize("search", ["numpy", "torch"])
def test_top_k_cosine_breaks_wide_ties_by_index(monkeypatch, search):
    """A query with 100 equally similar training rows (more than the first candidates): the
    k lowest indices among them, as an exact search gives."""
    import featcache.train.heads.neighbors as neighbors_mod

    monkeypatch.setattr(neighbors_mod, "TORCH_MIN_WORK", 0 if search == "torch" else 10**30)
    rng = np.random.default_rng(4)
    train = rng.normal(size=(400, 16)).astype(np.float32)
    tied = rng.permutation(400)[:100]
    train[tied] = train[tied[0]]
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    idx, sims = top_k_cosine(train[tied[:1]], train, 5)
    np.testing.assert_array_equal(idx[0], np.sort(tied)[:5])
    np.testing.assert_allclose(sims[0], 1.0, rtol=1e-6)


def test_gpu_search_sums_in_float32_and_restores_the_setting():
    from types import SimpleNamespace

    from featcache.train.heads.neighbors import float32_accumulation

    flags = SimpleNamespace(allow_bf16_reduced_precision_reduction=True, allow_tf32=True)
    fake_torch = SimpleNamespace(backends=SimpleNamespace(cuda=SimpleNamespace(matmul=flags)))
    with pytest.raises(KeyError):
        with float32_accumulation(fake_torch, SimpleNamespace(type="cuda")):
            assert flags.allow_bf16_reduced_precision_reduction is False and flags.allow_tf32 is False
            raise KeyError("a failing search")
    assert flags.allow_bf16_reduced_precision_reduction is True and flags.allow_tf32 is True
    with float32_accumulation(fake_torch, SimpleNamespace(type="cpu")):
        assert flags.allow_bf16_reduced_precision_reduction is True


@pytest.mark.parametrize("cpu_has_bf16", [True, False])
def test_cpu_search_multiplies_bfloat16_only_where_the_cpu_has_it(monkeypatch, cpu_has_bf16):
    """A CPU without AVX512-BF16 / AMX emulates bfloat16 products (~75x slower than float32 on an
    AVX2 EPYC): the search is then float32, with float32's tighter band."""
    import featcache.devices as devices_mod
    import featcache.train.heads.neighbors as neighbors_mod

    torch = pytest.importorskip("torch")
    monkeypatch.setattr(neighbors_mod, "TORCH_MIN_WORK", 0)
    monkeypatch.setattr(devices_mod, "cpu_bf16_native", lambda: cpu_has_bf16)
    built = []
    real = neighbors_mod._torch_candidates
    monkeypatch.setattr(neighbors_mod, "_torch_candidates", lambda *a: built.append(a[2]) or real(*a))
    rng = np.random.default_rng(3)
    train = neighbors_mod.normalize_rows(rng.normal(size=(50, 8)).astype(np.float32))
    search = neighbors_mod.CosineSearch(train, "cpu", n_queries=5)
    assert search.device == torch.device("cpu") and search.bfloat16 is cpu_has_bf16
    assert search.band == 2.0 * neighbors_mod.search_error(8, bfloat16=cpu_has_bf16)
    idx, _ = search.top_k(train[:5], 3)
    assert built == [cpu_has_bf16] and idx[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_search_error_bounds_the_candidate_search():
    import featcache.train.heads.neighbors as neighbors_mod

    rng = np.random.default_rng(5)
    for d in (16, 1280):
        a, b = (rng.normal(size=(300, d)).astype(np.float32) for _ in range(2))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        b[:10] = a[:10]  # similarities near 1, where bfloat16's spacing is widest
        exact = a.astype(np.float64) @ b.T.astype(np.float64)
        assert np.abs(a @ b.T - exact).max() <= neighbors_mod.search_error(d, bfloat16=False)
        torch = pytest.importorskip("torch")
        approx = (torch.from_numpy(a).bfloat16() @ torch.from_numpy(b).bfloat16().T).float().numpy()
        err = np.abs(approx - exact).max()
        assert err <= neighbors_mod.search_error(d, bfloat16=True)
        assert neighbors_mod.search_error(d, bfloat16=True) < 0.0065  # ~3 bfloat16 roundings


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_votes_like_scikit_learn(weights, data):
    X_train, X_test, y_train, _ = data
    ours = make_head("knn", n_neighbors=9, weights=weights).fit(X_train, y_train)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    ref = KNeighborsClassifier(n_neighbors=9, weights=weights, algorithm="brute")
    ref.fit(unit(X_train.astype(np.float64)), y_train)
    expected = ref.predict_proba(unit(X_test.astype(np.float64)))
    np.testing.assert_allclose(ours.predict_proba(X_test), expected, atol=1e-6)
    exact = vote(np.array([[0, 1, 1]]), np.array([[1.0, 0.5, 0.5]]), 2, "distance")
    np.testing.assert_array_equal(exact, [[1.0, 0.0]])  # an exact match takes all the weight


# ----------------------------------------------------------------- head files from before
@pytest.mark.parametrize("name", ["logreg", "svm", "knn", "ncm"])
def test_head_files_written_before_the_blockwise_solvers_predict_the_same(name):
    expected = np.load(OLD_FILES / "expected.npz")
    loaded = load_head(OLD_FILES / f"{name}.head.npz")
    proba = loaded.head.predict_proba(expected["X_query"])
    np.testing.assert_allclose(proba, expected[name], rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(proba.argmax(axis=1), expected[name].argmax(axis=1))


# ----------------------------------------------------------------- warm-started sweeps
def test_path_order_runs_strongest_regularisation_first():
    combos = [{"C": c, "max_iter": t} for t in (100, 200) for c in (10.0, 0.1, 1.0)]
    order = path_order(lambda p: make_head("logreg", C=p["C"]), combos)
    assert [combos[i]["C"] for i in order] == [0.1, 1.0, 10.0, 0.1, 1.0, 10.0]
    knn = [{"n_neighbors": k} for k in (1, 20, 5)]
    assert [knn[i]["n_neighbors"] for i in path_order(lambda p: make_head("knn", **p), knn)] == [20, 5, 1]
    assert path_order(lambda p: make_head("linear", **p), [{"lr": 1.0}, {"lr": 2.0}]) is None


@pytest.mark.parametrize("grid, together", [({"C": [1.0, 0.01, 0.1]}, 1),
                                            ({"C": [1.0, 0.01], "max_iter": [50, 100]}, 0)],
                         ids=["C: fitted together", "C and max_iter: warm-started paths"])
def test_a_logreg_sweep_matches_separate_fits(data, blockwise, monkeypatch, grid, together):
    X_train, X_val, y_train, y_val = data
    calls = []
    real = LogRegHead.fit_together.__func__
    monkeypatch.setattr(LogRegHead, "fit_together",
                        classmethod(lambda cls, heads, X, y: calls.append(len(heads)) or real(cls, heads, X, y)))
    res = sweep(lambda p: make_head("logreg", **p), grid, X_train, y_train, X_val, y_val, n_jobs=1)
    assert [r["params"] for r in res.rows] == sweep_combinations(grid)  # grid order
    assert len(calls) == together and (res.workers, res.in_process) == (1, len(res.rows))
    for row in res.rows:
        cold = make_head("logreg", **row["params"]).fit(X_train, y_train)
        assert row["val_score"] == pytest.approx(cold.score(X_val, y_val), abs=2 / len(y_val))
    best = make_head("logreg", **res.best_params).fit(X_train, y_train)
    np.testing.assert_allclose(res.best_estimator.coef_, best.coef_, atol=1e-2 * np.abs(best.coef_).max())


@pytest.mark.parametrize("name", ["logreg", "svm"])
@pytest.mark.parametrize("n_classes", [2, 5])
def test_linear_heads_fitted_together_equal_separate_fits(name, n_classes, data, blockwise, monkeypatch):
    """One pass over the data per round serves every solve still running; each ends where its
    own fit does (to the solver's tolerance), and the preconditioner is computed once."""
    X_train, X_test, y_train, _ = data
    keep = y_train < n_classes
    X_train, y_train = X_train[keep], y_train[keep]
    Cs = [0.01, 0.1, 1.0]
    widths, factors = [], []
    real_eval, real_factor = solvers.LinearObjective._evaluate_many, solvers.covariance_factor
    monkeypatch.setattr(solvers.LinearObjective, "_evaluate_many",
                        lambda self, thetas, alphas: widths.append(len(thetas)) or real_eval(self, thetas, alphas))
    monkeypatch.setattr(solvers, "covariance_factor", lambda objective: factors.append(1) or real_factor(objective))
    heads = [make_head(name, C=C) for C in Cs]
    assert type(heads[0]).fit_together(heads, X_train, y_train) is heads
    rounds = len(widths)
    assert widths[0] == 3 and widths == sorted(widths, reverse=True) and len(factors) == 1
    assert rounds <= max(h.n_iter_ for h in heads) + 10
    widths.clear()
    for C, head in zip(Cs, heads):
        alone = make_head(name, C=C).fit(X_train, y_train)
        np.testing.assert_allclose(head.coef_, alone.coef_, atol=2e-2 * np.abs(alone.coef_).max())
        assert np.mean(head.predict(X_test) == alone.predict(X_test)) >= 0.99
        np.testing.assert_array_equal(head.mean_, alone.mean_)
        assert head._factor_ is heads[0]._factor_ and head.n_samples_fit_ == len(y_train)
    assert rounds < len(widths)  # separate fits: one pass per evaluation of each


@pytest.mark.parametrize("name,params", [("logreg", {"C": 1.0}), ("svm", {"C": 0.01}), ("linear", {"max_epochs": 2}),
                                         ("mlp", {"max_epochs": 2, "hidden_sizes": (8,)})])
@pytest.mark.parametrize("solver", ["blockwise", "default"])
def test_a_grid_refitted_on_other_data_keeps_nothing_of_the_old(data, name, params, solver, monkeypatch):
    """Every head of a grid fitted together takes the new data's classes, feature count,
    standardisation and row count, whichever head was fitted on what before."""
    if solver == "blockwise":
        monkeypatch.setattr(sklearn_heads, "SKLEARN_MAX_MACS", 0)
    X_train, _, y_train, _ = data
    heads = [make_head(name, **params) for _ in range(2)]
    heads[1].fit(X_train[:, :10], (y_train > 2).astype(int))  # 10 features, 2 classes
    heads[1].n_samples_fit_ = -1
    heads[1].feature_names_in_ = np.array([f"f{i}" for i in range(10)], dtype=object)  # as from a data frame
    type(heads[0]).fit_together(heads, X_train, y_train)
    for head in heads:
        assert not hasattr(head, "feature_names_in_")
        assert head.n_features_in_ == 40 and list(head.classes_) == [0, 1, 2, 3, 4]
        assert head.mean_ is heads[0].mean_ and head.predict(X_train[:5]).shape == (5,)
        assert getattr(head, "n_samples_fit_", len(y_train)) == len(y_train)


def test_linear_heads_fitted_together_from_disk_read_each_block_once_a_round(data, tmp_path, monkeypatch, blockwise):
    X_train, X_test, y_train, _ = data
    monkeypatch.setattr(heads_base, "BLOCK_BYTES", 100 * 40 * 4)  # blocks of 100 rows
    Cs = [0.001, 1.0]
    in_memory = SVMHead.fit_together([make_head("svm", C=C) for C in Cs], X_train, y_train)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["x"] = X_train
    widths = []
    real_eval = solvers.LinearObjective._evaluate_many
    monkeypatch.setattr(solvers.LinearObjective, "_evaluate_many",
                        lambda self, thetas, alphas: widths.append(len(thetas)) or real_eval(self, thetas, alphas))
    with h5py.File(tmp_path / "f.h5", "r") as f:
        lazy = RowLimitedArray(f["x"], max_rows=100)
        heads = SVMHead.fit_together([make_head("svm", C=C) for C in Cs], lazy, y_train)
    blocks = -(-len(X_train) // 100)
    assert widths[0] == 2 and sum(widths) > len(widths)  # rounds shared by both solves
    assert lazy.reads == (len(widths) + 2) * blocks  # + the column statistics and the preconditioner
    for head, ref in zip(heads, in_memory):
        np.testing.assert_allclose(head.predict_proba(X_test), ref.predict_proba(X_test), rtol=1e-4, atol=1e-5)


def test_small_matrices_fitted_together_are_scikit_learns_fits(data):
    X_train, X_test, y_train, _ = data
    heads = LogRegHead.fit_together([make_head("logreg", C=C) for C in (0.1, 1.0)], X_train, y_train)
    for head in heads:
        alone = make_head("logreg", C=head.C).fit(X_train, y_train)
        np.testing.assert_array_equal(head.coef_, alone.coef_)


def test_a_point_fitted_together_that_runs_out_of_iterations_is_named(data, blockwise):
    X_train, _, y_train, _ = data
    with pytest.warns(ConvergenceWarning) as caught:
        LogRegHead.fit_together([make_head("logreg", C=C, max_iter=3) for C in (0.01, 10.0)], X_train, y_train)
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning))
    assert len(messages) == 2  # one warning per point that ran out, each naming its C
    assert messages[0].startswith("LogRegHead (C=0.01): L-BFGS did not converge in max_iter=3")
    assert messages[1].startswith("LogRegHead (C=10): L-BFGS did not converge in max_iter=3")


def test_lockstep_rounds_evaluate_every_running_solve_together():
    batches = []

    def solve(n):
        return lambda fun: [fun(i) for i in range(n)]

    def evaluate(batch):
        batches.append([i for i, _ in batch])
        return [10 * x for _, x in batch]

    assert run_lockstep([solve(3), solve(1), solve(2)], evaluate) == [[0, 10, 20], [0], [0, 10]]
    assert batches == [[0, 1, 2], [0, 2], [0]]


def test_lockstep_raises_the_first_error_and_stops_every_solve():
    import threading

    before = threading.active_count()

    def forever(fun):
        while True:
            fun(1)

    def failing(fun):
        fun(0)
        raise ValueError("solve 0 failed")

    with pytest.raises(ValueError, match="solve 0 failed"):
        run_lockstep([failing, forever, forever], lambda batch: [x for _, x in batch])
    assert threading.active_count() == before

    for error in (RuntimeError("the pass failed"), KeyboardInterrupt()):  # Ctrl-C arrives in this thread

        def failing_pass(batch, error=error):
            raise error

        with pytest.raises(type(error)):
            run_lockstep([forever, forever], failing_pass)
        assert threading.active_count() == before


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_linear_path_whitens_once(name, data, blockwise, monkeypatch):
    """The preconditioner depends on the matrix only: a path computes it at its first point."""
    X_train, X_val, y_train, y_val = data
    calls = []
    real = solvers.covariance_factor
    monkeypatch.setattr(solvers, "covariance_factor", lambda objective: calls.append(1) or real(objective))
    first = make_head(name, C=0.01).fit(X_train, y_train)
    assert first._factor_ is not None and "_factor_" not in first.__getstate__()
    warm = make_head(name, C=1.0).fit(X_train, y_train, warm_start=first)
    assert len(calls) == 1 and warm._factor_ is first._factor_
    cold = make_head(name, C=1.0).fit(X_train, y_train, warm_start=None)
    assert len(calls) == 2  # the same problem from another start: the same answer to the tolerance
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=5e-2 * np.abs(cold.coef_).max())
    assert np.mean(warm.predict(X_val) == cold.predict(X_val)) >= 0.99


def test_knn_path_searches_neighbours_once(data, monkeypatch):
    X_train, X_val, y_train, y_val = data
    calls = []
    real = sklearn_heads.CosineSearch.top_k

    def counting(self, queries, k):
        calls.append(k)
        return real(self, queries, k)

    monkeypatch.setattr(sklearn_heads.CosineSearch, "top_k", counting)
    grid = {"n_neighbors": [1, 5, 10], "weights": ["uniform", "distance"]}
    res = sweep(lambda p: make_head("knn", **p), grid, X_train, y_train, X_val, y_val)
    assert calls == [10]  # the largest k once; every other point reuses it
    for row in res.rows:
        cold = make_head("knn", **row["params"]).fit(X_train, y_train)
        assert row["val_score"] == cold.score(X_val, y_val)


def test_pickling_a_head_leaves_out_its_caches_without_touching_them(data):
    import pickle

    X_train, X_val, y_train, _ = data
    head = make_head("knn", n_neighbors=5).fit(X_train, y_train)
    expected = head.predict(X_val)
    blob = pickle.dumps(head)
    assert head._last_query_["ref"]() is X_val  # the live head keeps its cache
    copy = pickle.loads(blob)
    assert "_last_query_" not in vars(copy)
    np.testing.assert_array_equal(copy.predict(X_val), expected)


def test_a_failing_point_of_a_path_is_named(data):
    X_train, X_val, y_train, y_val = data
    with pytest.raises(HeadError, match=r"C=-1 is not valid; expected a positive number"):
        sweep(lambda p: make_head("svm", **p), {"C": [0.1, -1]}, X_train, y_train, X_val, y_val)


def test_ncm_path_reuses_centroids_of_the_same_centering(data):
    X_train, X_val, y_train, y_val = data
    res = sweep(lambda p: make_head("ncm", **p), {"center": [True, False], "temperature": [0.05, 0.2]},
                X_train, y_train, X_val, y_val)
    assert [r["params"]["center"] for r in res.rows] == [True, True, False, False]
    assert res.rows[0]["val_score"] == res.rows[1]["val_score"]  # temperature changes no prediction
    cold = make_head("ncm", center=False).fit(X_train, y_train)
    assert res.rows[2]["val_score"] == cold.score(X_val, y_val)


def test_warm_start_from_another_fit_is_ignored_when_it_does_not_fit(data, blockwise):
    X_train, _, y_train, _ = data
    other = make_head("logreg").fit(X_train[:, :10], y_train)
    head = make_head("logreg").fit(X_train, y_train, warm_start=other)  # other features: cold start
    cold = make_head("logreg").fit(X_train, y_train)
    np.testing.assert_allclose(head.coef_, cold.coef_)


def test_lbfgs_history_is_bounded_by_memory():
    from featcache.train.heads.solvers import HISTORY_BYTES, MAX_HISTORY, history_size

    assert history_size(12_810) == MAX_HISTORY  # 1,280 features x 10 classes
    big = 100_000
    assert 10 <= history_size(big) < MAX_HISTORY
    assert history_size(big) * 16 * big <= HISTORY_BYTES
    assert history_size(10**9) == 10  # never below scipy's default


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter=5
@pytest.mark.parametrize("together", [False, True], ids=["one fit", "fitted together"])
def test_optimiser_runs_on_one_blas_thread_and_data_passes_on_all(data, monkeypatch, together):
    """The L-BFGS bookkeeping is limited to one BLAS thread; the objective gets them all back."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return max(m["num_threads"] for m in threadpool_info() if m["user_api"] == "blas")

    before = blas_threads()
    seen = []
    real = solvers.LinearObjective._evaluate_many

    def spy(self, thetas, alphas):
        seen.append(blas_threads())
        return real(self, thetas, alphas)

    monkeypatch.setattr(solvers.LinearObjective, "_evaluate_many", spy)
    seen_outside = []
    real_min = solvers.minimize

    def spy_min(*args, **kwargs):
        seen_outside.append(blas_threads())
        return real_min(*args, **kwargs)

    monkeypatch.setattr(solvers, "minimize", spy_min)
    monkeypatch.setattr(sklearn_heads, "SKLEARN_MAX_MACS", 0)  # the blockwise solver
    X_train, _, y_train, _ = data
    if together:
        LogRegHead.fit_together([make_head("logreg", C=C, max_iter=5) for C in (0.1, 1.0)], X_train, y_train)
    else:
        make_head("logreg", max_iter=5).fit(X_train, y_train)
    assert seen and set(seen) == {before}
    assert seen_outside == [1] * (2 if together else 1)
    assert blas_threads() == before


def test_row_max_is_numpys_row_maximum():
    Z = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float32)
    Z[3] = -np.inf
    assert np.array_equal(solvers.row_max(Z), Z.max(axis=1, keepdims=True))


@pytest.mark.parametrize("dropout", [0.2, 0.5, 0.9])
def test_dropout_keeps_one_minus_p_of_the_units_reproducibly(dropout):
    import torch

    from featcache.train.heads._torch_train import keep_mask

    def draw(seed, shape=(301, 257)):  # an odd element count: the last 64-bit draw is cut
        return keep_mask(shape, dropout, torch.Generator().manual_seed(seed), torch.device("cpu"))

    m = draw(0)
    assert m.shape == (301, 257) and m.dtype == torch.bool
    assert abs(float(m.float().mean()) - (1 - dropout)) < 0.01
    assert torch.equal(m, draw(0)) and not torch.equal(m, draw(1))
    # columns are not correlated with their neighbours (the four int16 of a draw are independent)
    assert abs(float((m[:, 0:256:2].float() * m[:, 1:256:2].float()).mean()) - (1 - dropout) ** 2) < 0.01
    for dtype in (torch.float32, torch.bfloat16):  # the multiplier in a dtype: the same mask
        multiplier = keep_mask((301, 257), dropout, torch.Generator().manual_seed(0), torch.device("cpu"), dtype)
        assert multiplier.dtype == dtype and torch.equal(multiplier, m.to(dtype))


def test_adamw_takes_the_textbook_step():
    import torch

    from featcache.train.heads._torch_train import AdamW, Net

    net = Net([6, 4, 3], 0.0, torch.device("cpu"), torch.Generator().manual_seed(0), 0)
    start = [p.detach().clone() for p in net.params]
    opt = AdamW(net, lr=0.01, weight_decay=0.1)
    grads = []
    for t in (1, 2):
        for p in net.params:
            p.grad = torch.full_like(p, 0.5 * t) + torch.arange(p.numel()).view(p.shape) / 10
        grads.append([p.grad.clone() for p in net.params])
        opt.step()
    for i, (p, p0) in enumerate(zip(net.params, start)):
        wd = 0.1 if i < len(net.weights) else 0.0
        x, m, v = p0.double(), 0.0, 0.0
        for t, g in enumerate(grads, start=1):
            g = g[i].double()
            x = x * (1 - 0.01 * wd)
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            x = x - 0.01 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        assert torch.allclose(p.double(), x, rtol=1e-5, atol=1e-7), i
    assert all(p.grad is None for p in net.params)  # each step clears the gradients


def test_adamw_step_takes_the_schedules_share_of_its_rate():
    import torch

    from featcache.train.heads._torch_train import AdamW, Net

    nets = [Net([6, 4, 3], 0.0, torch.device("cpu"), torch.Generator().manual_seed(0), 0) for _ in range(2)]
    for net, lr, factor in ((nets[0], 0.01, 1.0), (nets[1], 0.04, 0.25)):
        opt = AdamW(net, lr=lr, weight_decay=0.1)
        for p in net.params:
            p.grad = torch.ones_like(p)
        opt.step(factor)
    for a, b in zip(*(net.params for net in nets)):
        assert torch.equal(a, b)


# ----------------------------------------------------------------- devices
def test_device_rule_of_the_blockwise_heads():
    import torch

    from featcache.train.heads._torch_train import products_device

    assert products_device("auto", 10, 100) is None  # small: numpy, torch not needed
    assert products_device("cpu", 10, 100) is None
    assert products_device("cpu", 100, 100) == torch.device("cpu")
    big = products_device("auto", 100, 100)
    assert big.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():  # a GPU named on a machine without one: said so, whatever the size
        with pytest.raises(FeatcacheError, match="CUDA is not available"):
            products_device("cuda", 10, 100)


def test_device_rule_where_torch_does_not_pay_on_the_cpu(monkeypatch):
    """``cpu=False`` (x86 CPUs not made by Intel, for the linear heads): numpy on the CPU at any
    size, and on a machine that surely has no GPU torch is not even asked."""
    import torch


    assert torch_train.products_device("cpu", 100, 100, cpu=False) is None
    big = torch_train.products_device("auto", 100, 100, cpu=False)
    assert big is None if not torch.cuda.is_available() else big.type == "cuda"

    def no_torch(device):
        raise AssertionError("torch asked for the device")

    monkeypatch.setattr(torch_train, "gpu_possible", lambda: False)
    monkeypatch.setattr(torch_train, "head_device", no_torch)
    assert torch_train.products_device("auto", 100, 100, cpu=False) is None
    assert torch_train.products_device("auto", 10, 100) is None  # small: as before
    with pytest.raises(AssertionError, match="torch asked"):  # cpu=True: torch resolves "auto"
        torch_train.products_device("auto", 100, 100)


@pytest.mark.parametrize("system,present,possible", [("Linux", [], False), ("Linux", ["nvidiactl"], True),
                                                     ("Linux", ["dxg"], True), ("Linux", ["kfd"], True),
                                                     ("Darwin", [], True), ("Windows", [], True)])
def test_a_gpu_is_ruled_out_without_torch_only_where_the_device_files_say_so(
        monkeypatch, tmp_path, system, present, possible):
    import platform

    from featcache import environment

    for name in present:
        (tmp_path / name).touch()
    monkeypatch.setattr(environment, "GPU_DEVICE_FILES", tuple(str(tmp_path / n) for n in ("nvidiactl", "dxg", "kfd")))
    monkeypatch.setattr(platform, "system", lambda: system)
    assert environment.gpu_possible() is possible


@pytest.mark.parametrize("name", ["logreg", "svm", "knn"])
def test_a_misspelt_device_is_refused_before_any_work(name, data):
    X_train, _, y_train, _ = data
    with pytest.raises(HeadError, match=r"device='gpu' is not valid; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        make_head(name, device="gpu").fit(X_train, y_train)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("name", ["logreg", "svm", "knn"])
def test_a_gpu_named_where_there_is_none_is_refused_whatever_the_size(name, data):
    X_train, _, y_train, _ = data  # small: logreg/svm would use scikit-learn, knn numpy
    with pytest.raises(FeatcacheError, match="CUDA is not available"):
        make_head(name, device="cuda").fit(X_train, y_train)
    if name != "knn":  # a grid over C fitted together, small (scikit-learn) or blockwise
        cls = type(make_head(name))
        for limit in (10**12, 0):
            with pytest.MonkeyPatch.context() as mp, pytest.raises(FeatcacheError, match="CUDA is not available"):
                mp.setattr(sklearn_heads, "SKLEARN_MAX_MACS", limit)
                cls.fit_together([make_head(name, C=C, device="cuda") for C in (0.1, 1.0)], X_train, y_train)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["logreg", "svm"])
@pytest.mark.parametrize("blockwise", [False, True])
def test_linear_heads_fit_on_the_gpu_like_on_the_cpu(name, blockwise, data, tmp_path, monkeypatch):
    X_train, X_val, y_train, y_val = data
    monkeypatch.setattr(sklearn_heads, "SKLEARN_MAX_MACS", 0)  # the blockwise solver
    X = X_train
    if blockwise:  # a lazy matrix: its blocks go to the GPU at every pass
        with h5py.File(tmp_path / "x.h5", "w") as f:
            f["X"] = X_train
        X = h5py.File(tmp_path / "x.h5", "r")["X"]
    gpu = make_head(name, device="cuda").fit(X, y_train)
    cpu = make_head(name, device="cpu").fit(X_train, y_train)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-3, atol=1e-3 * np.abs(cpu.coef_).max())
    assert np.mean(gpu.predict(X_val) == cpu.predict(X_val)) >= 0.99
    cls = type(gpu)  # a grid over C fitted together: every solve's passes on the GPU
    gpus = cls.fit_together([make_head(name, C=C, device="cuda") for C in (0.1, 1.0)], X, y_train)
    cpus = cls.fit_together([make_head(name, C=C, device="cpu") for C in (0.1, 1.0)], X_train, y_train)
    for g, c in zip(gpus, cpus):
        np.testing.assert_allclose(g.coef_, c.coef_, rtol=1e-3, atol=1e-3 * np.abs(c.coef_).max())


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_knn_searches_on_the_gpu_like_on_the_cpu(data):
    X_train, X_test, _, _ = data
    train = X_train / np.linalg.norm(X_train, axis=1, keepdims=True)
    queries = X_test / np.linalg.norm(X_test, axis=1, keepdims=True)
    idx_gpu, sims_gpu = top_k_cosine(queries, train, 7, "cuda")
    idx_cpu, sims_cpu = top_k_cosine(queries, train, 7, "cpu")
    np.testing.assert_array_equal(idx_gpu, idx_cpu)  # the exact float64 re-ranking decides both
    np.testing.assert_array_equal(sims_gpu, sims_cpu)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
def test_a_knn_head_fitted_for_a_gpu_predicts_on_a_machine_without_one(data):
    X_train, X_test, y_train, _ = data
    with pytest.raises(FeatcacheError, match="CUDA is not available"):  # fitting asks for the GPU
        make_head("knn", device="cuda").fit(X_train, y_train)
    fitted = make_head("knn").fit(X_train, y_train)
    reference = fitted.predict(X_test)
    loaded = type(fitted).from_state({**fitted.get_params(), "device": "cuda"}, fitted.get_state())  # as saved there
    with pytest.warns(RuntimeWarning, match=r"device='cuda' is not available here .*'auto'"):
        np.testing.assert_array_equal(loaded.predict(X_test), reference)
