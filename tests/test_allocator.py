"""The allocator setting of the forward loop: freed memory kept for reuse (glibc), speed only."""
from __future__ import annotations

import platform

import numpy as np
import pytest

import featcache
from featcache import allocator


class FakeLibc:
    """Records mallopt / malloc_trim calls; ``ok`` is what mallopt answers."""

    def __init__(self, ok: int = 1):
        self.calls, self.ok = [], ok

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return self.ok

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: fake)
    return fake


KEEP = [("mallopt", allocator.M_MMAP_THRESHOLD, allocator.KEEP_BYTES),
        ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.KEEP_BYTES)]
LEAVE = [("mallopt", allocator.M_MMAP_THRESHOLD, allocator.SETTLED_MMAP_BYTES),
         ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.SETTLED_TRIM_BYTES), ("malloc_trim", 0)]


def test_inside_large_blocks_come_from_the_heap_and_leaving_gives_free_memory_back(libc):
    with allocator.keep_freed_memory() as kept:
        assert kept and libc.calls == KEEP
    assert libc.calls == KEEP + LEAVE


def test_nested_uses_keep_it_until_the_outermost_leaves(libc):
    with allocator.keep_freed_memory():
        with allocator.keep_freed_memory() as inner:
            assert inner
        assert libc.calls == KEEP  # the inner one left: nothing given back yet
    assert libc.calls == KEEP + LEAVE


def test_disabled_or_refused_is_reported_as_not_in_effect(libc, monkeypatch):
    with allocator.keep_freed_memory(enabled=False) as kept:
        assert not kept
    assert libc.calls == []
    libc.ok = 0  # a C library that refuses the thresholds
    with allocator.keep_freed_memory() as kept:
        assert not kept
    monkeypatch.setattr(allocator, "_glibc", lambda: None)  # not glibc: a no-op
    with allocator.keep_freed_memory() as kept:
        assert not kept and not allocator.available()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_the_real_c_library_takes_the_setting():
    assert allocator.available()
    with allocator.keep_freed_memory() as kept:
        assert kept
        buf = np.ones(64 << 20, dtype=np.uint8)  # a block far above glibc's own threshold
        assert int(buf.sum()) == 64 << 20


def test_extract_keeps_freed_memory_on_the_cpu_unless_compute_plain(image_folder, tmp_path, libc):
    kw = dict(backbone="resnet18", weights="none", image_size=32, workers=0, batch_size=4)
    auto = featcache.extract(str(image_folder), cache_dir=tmp_path / "a", **kw)
    assert auto.heap_reuse and "freed memory reused" in auto.summary()
    assert libc.calls == KEEP + LEAVE  # set for the forward, given back after it
    libc.calls.clear()
    plain = featcache.extract(str(image_folder), cache_dir=tmp_path / "p", compute="plain", **kw)
    assert not plain.heap_reuse and libc.calls == [] and "freed memory" not in plain.summary()


@pytest.mark.skipif(not allocator.available(), reason="needs glibc")
def test_features_are_the_same_bits_with_and_without_it(image_folder, tmp_path, monkeypatch):
    kw = dict(backbone="resnet18", weights="none", image_size=32, workers=0, batch_size=4)
    on = featcache.extract(str(image_folder), cache_dir=tmp_path / "on", **kw)
    monkeypatch.setattr(allocator, "available", lambda: False)
    off = featcache.extract(str(image_folder), cache_dir=tmp_path / "off", **kw)
    assert on.heap_reuse and not off.heap_reuse and on.levers == off.levers
    np.testing.assert_array_equal(featcache.load_features(on.view).features, featcache.load_features(off.view).features)
