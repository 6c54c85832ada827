"""CPU inference levers: the rule, the record kept with a feature set, and exactness."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import featcache
from featcache.errors import FeatcacheError, UnknownNameError
from featcache.extraction import levers
from featcache import devices
from featcache.extraction.layers import FeatureExtractor
from featcache.extraction.lever_tables import TABLES, LeverTable
from featcache.extraction.levers import PLAIN, Levers
from featcache.store.featureset import FeatureStore
from featcache.extraction.identity import resolve_identity

from conftest import load_script, make_image

CPU = torch.device("cpu")
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
KW = dict(backbone="resnet18", weights="none", image_size=32, workers=0, batch_size=16)


def table(measured=("resnet18",), loses_cl=(), loses_freeze=(), loses_cl_frozen=(), wins_ort=None) -> LeverTable:
    """``wins_ort``: backbone -> the fewest 224-px images ONNX Runtime needs to pay."""
    return LeverTable("test", frozenset(measured), frozenset(loses_cl), frozenset(loses_freeze),
                      frozenset(loses_cl_frozen), dict(wins_ort or {}))


@pytest.fixture
def both_levers_pay(monkeypatch):
    """A table in which both levers pay for resnet18 (the committed ones are tested on their own)."""
    monkeypatch.setattr(levers, "cpu_table", lambda: table())


def test_rule_is_plain_for_plain_cuda_bfloat16_and_unmeasured_backbones(both_levers_pay):
    big = dict(images=10_000, pixels=224 * 224)
    assert levers.choose("resnet18", CPU, **big) == Levers(channels_last=True, freeze=True)
    assert levers.choose("resnet18", CPU, compute="plain", **big) == PLAIN
    assert levers.choose("resnet18", torch.device("cuda"), **big) == PLAIN  # CUDA keeps its own path
    assert levers.choose("resnet18", CPU, precision="bfloat16", **big) == Levers(channels_last=True)
    assert levers.choose("not_in_the_table", CPU, **big) == PLAIN


def test_freeze_only_when_the_work_repays_its_set_up(both_levers_pay):
    at = levers.FREEZE_MIN_WORK // (64 * 64)
    assert not levers.choose("resnet18", CPU, images=at - 1, pixels=64 * 64).freeze
    assert levers.choose("resnet18", CPU, images=at, pixels=64 * 64).freeze
    assert not levers.choose("resnet18", CPU, images=at - 1, pixels=64 * 64).freeze


def test_rule_drops_a_lever_where_the_table_says_it_loses(monkeypatch):
    monkeypatch.setattr(levers, "cpu_table", lambda: table(loses_cl=["resnet18"], loses_freeze=["resnet18"]))
    assert levers.choose("resnet18", CPU, images=10_000) == PLAIN
    monkeypatch.setattr(levers, "cpu_table", lambda: table(loses_cl_frozen=["resnet18"]))
    assert levers.choose("resnet18", CPU, images=10_000) == Levers(freeze=True)


def test_a_frozen_run_takes_the_frozen_layout_and_an_unfrozen_one_the_unfrozen(monkeypatch):
    """The fastest of the four variants when the run freezes (here NCHW frozen, though
    channels_last alone beats plain), the faster unfrozen one when it does not."""
    monkeypatch.setattr(levers, "cpu_table", lambda: table(loses_cl_frozen=["resnet18"]))
    assert levers.choose("resnet18", CPU, images=10_000) == Levers(freeze=True)
    assert levers.choose("resnet18", CPU, images=1) == Levers(channels_last=True)
    monkeypatch.setattr(levers, "cpu_table", lambda: table(loses_cl=["resnet18"]))
    assert levers.choose("resnet18", CPU, images=10_000) == Levers(channels_last=True, freeze=True)
    assert levers.choose("resnet18", CPU, images=1) == PLAIN


def test_onnxruntime_where_the_table_says_it_wins_with_enough_work_in_float32(monkeypatch):
    monkeypatch.setattr(levers, "cpu_table", lambda: table(wins_ort={"resnet18": 300}))
    ort = Levers(onnxruntime=True)
    assert levers.choose("resnet18", CPU, images=10_000) == ort
    assert levers.choose("resnet18", CPU, images=1) == Levers(channels_last=True)  # too little work to export
    assert levers.choose("resnet18", CPU, images=300) == ort  # the table's break-even, at 224 px
    assert levers.choose("resnet18", CPU, images=299) == Levers(channels_last=True, freeze=True)
    assert levers.choose("resnet18", CPU, images=300 * 4, pixels=112 * 112) == ort  # counted in pixels
    assert levers.choose("resnet18", CPU, images=300 * 4 - 1, pixels=112 * 112) == Levers(channels_last=True, freeze=True)
    assert levers.choose("resnet18", CPU, images=10_000, precision="bfloat16") == Levers(channels_last=True)
    assert levers.choose("resnet18", CPU, compute="plain", images=10_000) == PLAIN
    assert ort.describe() == "onnxruntime" and Levers.from_names(["onnxruntime"]) == ort
    monkeypatch.setattr(levers.onnx_forward, "available", lambda: False)  # not installed: the torch levers
    assert levers.choose("resnet18", CPU, images=10_000) == Levers(channels_last=True, freeze=True)


def test_a_set_recorded_with_onnxruntime_where_it_is_missing_says_what_to_do(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    model = FeatureExtractor(torchvision.models.resnet18(weights=None)).eval()
    with pytest.raises(FeatcacheError, match="onnxruntime, which is not installed.*pip install onnx onnxruntime"):
        levers.prepare(model, Levers(onnxruntime=True), torch.zeros(2, 3, 32, 32))


def test_an_extractor_onnx_cannot_export_fails_with_advice():
    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x[:, 0]).real  # no ONNX operator for it

    with pytest.raises(FeatcacheError, match="exporting Unexportable to ONNX Runtime failed.*--compute plain"):
        levers.prepare(Unexportable(), Levers(onnxruntime=True), torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize("kind", ["AVX512", "AVX2"])
def test_each_cpu_kind_uses_its_own_table_and_an_unmeasured_kind_runs_plainly(monkeypatch, kind):
    monkeypatch.setattr(levers, "TABLES", {"AVX512": table(loses_cl=["resnet18"]), "AVX2": table()})
    monkeypatch.setattr(levers, "cpu_kind", lambda: kind)
    assert levers.choose("resnet18", CPU, images=1).channels_last is (kind == "AVX2")
    monkeypatch.setattr(levers, "cpu_kind", lambda: "NEON")
    assert levers.choose("resnet18", CPU, images=1) == PLAIN
    assert levers.choose("resnet18", CPU, images=10_000) == PLAIN


def test_this_machines_kind_is_what_torch_dispatches_on():
    assert levers.cpu_kind() == torch.backends.cpu.get_cpu_capability()
    assert levers.cpu_table() is levers.TABLES.get(levers.cpu_kind())


def test_unknown_compute_mode_names_the_choices():
    with pytest.raises(UnknownNameError, match="--compute mode .fast.*auto"):
        levers.choose("resnet18", CPU, compute="fast")


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_committed_table_matches_the_rule(kind):
    t = TABLES[kind]
    doc = json.loads((RESULTS / t.source).read_text())
    assert doc.get("cpu_kind", "AVX512") == kind  # the first table (AVX512) predates the field
    assert set(doc["sets"]["MEASURED"]) == set(t.measured)
    assert set(doc["sets"]["LOSES_CHANNELS_LAST"]) == set(t.loses_channels_last)
    assert set(doc["sets"]["LOSES_FREEZE"]) == set(t.loses_freeze)
    assert set(doc["sets"]["LOSES_CHANNELS_LAST_FROZEN"]) == set(t.loses_channels_last_frozen)
    if t.onnxruntime_source:  # measured by a later run, with the onnxruntime variant
        ort = json.loads((RESULTS / t.onnxruntime_source).read_text())
        assert ort["cpu_kind"] == kind and ort["sets"]["WINS_ONNXRUNTIME"] == dict(t.wins_onnxruntime)
        assert set(t.wins_onnxruntime) <= t.measured
        assert min(t.wins_onnxruntime.values()) * levers.PX_224 >= levers.FREEZE_MIN_WORK
    else:
        assert not t.wins_onnxruntime
    for row in doc["rows"]:  # every lever kept was within 1e-5 and not slower than without it
        d = row["decision"]
        if d["measured"]:
            assert d["best_vs_plain"] >= 1.0


@pytest.fixture
def feature_set(tmp_path):
    ident, _, _ = resolve_identity("resnet18", weights="none", image_size=32)
    return FeatureStore(tmp_path / "cache").open(ident)


def test_first_run_records_its_levers_and_later_runs_reuse_them(feature_set):
    assert levers.recorded(feature_set) is None
    fast = Levers(channels_last=True, freeze=True)
    assert levers.settle(feature_set, fast, "auto") == fast
    assert (Path(feature_set.dir) / levers.RECORD).is_file()
    assert levers.settle(feature_set, PLAIN, "auto") == fast  # the record wins over a new choice
    # a record without rows (a run that failed before its first row, e.g. in an export) is no
    # reason to refuse the --compute plain that the failure's message advises
    assert levers.settle(feature_set, PLAIN, "plain") == PLAIN
    assert levers.recorded(feature_set) == PLAIN


def test_a_gpu_run_into_a_set_recorded_with_cpu_levers_computes_its_own_way(feature_set):
    cuda = torch.device("cuda")  # only the device's type is read: no GPU needed
    assert levers.settle(feature_set, PLAIN, "auto", cuda) == PLAIN
    assert levers.recorded(feature_set) == PLAIN  # a new set started on a GPU is recorded plain
    (Path(feature_set.dir) / levers.RECORD).unlink()
    assert levers.settle(feature_set, Levers(onnxruntime=True), "auto") == Levers(onnxruntime=True)
    w = feature_set.writer(4)
    w.append(["a" * 32], np.zeros((1, 4), np.float32))
    w.flush()
    # the CPU's record does not reach the GPU, nor does it refuse the GPU's --compute plain
    assert levers.settle(feature_set, PLAIN, "auto", cuda) == PLAIN
    assert levers.settle(feature_set, PLAIN, "plain", cuda) == PLAIN
    assert levers.settle(feature_set, PLAIN, "auto") == Levers(onnxruntime=True)  # the CPU's runs keep it


def test_a_set_with_rows_but_no_record_stays_plain(feature_set):
    w = feature_set.writer(4)
    w.append(["a" * 32], np.zeros((1, 4), np.float32))
    w.flush()
    assert levers.settle(feature_set, Levers(channels_last=True), "auto") == PLAIN


def test_a_damaged_record_is_an_error_that_says_what_to_do(feature_set):
    path = Path(feature_set.dir) / levers.RECORD
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(FeatcacheError, match="unreadable.*'levers'"):
        levers.recorded(feature_set)
    path.write_text(json.dumps({"levers": ["warp_drive"]}))
    with pytest.raises(FeatcacheError, match="warp_drive.*upgrade"):
        levers.recorded(feature_set)


@pytest.mark.parametrize("lev", [Levers(channels_last=True), Levers(freeze=True),
                                 Levers(channels_last=True, freeze=True), Levers(onnxruntime=True)])
def test_each_lever_is_exact_to_rounding_and_keeps_rows_independent_of_batch_mates(lev):
    torch.manual_seed(0)
    model = FeatureExtractor(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(24, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        fast = levers.prepare(model, lev, levers.to_input(x[:levers.TRACE_ROWS], lev))
        whole = fast(levers.to_input(x, lev))
        padded = fast(levers.to_input(torch.cat([x[8:], x[-1:].expand(8, 3, 32, 32)]), lev))[:16]
    assert float((whole - ref).abs().max() / ref.abs().max()) <= 1e-5
    assert torch.equal(whole[8:], padded)  # a row's bits do not depend on the rows batched with it


def test_onnxruntime_rows_do_not_depend_on_the_thread_count():
    """torchrun ranks split the cores, so each rank's session has fewer threads than one process's."""
    torch.manual_seed(0)
    model = FeatureExtractor(torchvision.models.mobilenet_v3_small(weights=None)).eval()
    x = torch.randn(16, 3, 32, 32)
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(levers.prepare(copy.deepcopy(model), Levers(onnxruntime=True), x[:levers.TRACE_ROWS])(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "densenet121"])
def test_a_graph_traced_on_a_small_batch_runs_full_batches_bit_for_bit(name):
    """extract traces on TRACE_ROWS rows: the graph must not be specialised to that batch size."""
    torch.manual_seed(0)
    model = FeatureExtractor(getattr(torchvision.models, name)(weights=None)).eval()
    x = torch.randn(32, 3, 32, 32)
    lev = Levers(freeze=True)
    with torch.inference_mode():
        small = levers.prepare(copy.deepcopy(model), lev, x[:levers.TRACE_ROWS])(x)
        big = levers.prepare(copy.deepcopy(model), lev, x[:16])(x)
        ref = model(x)
    assert small.shape == ref.shape and torch.equal(small, big)
    assert float((small - ref).abs().max() / ref.abs().max()) <= 1e-5


def extract_with_levers_then_grow(image_folder, tmp_path, reach, expected: str, seed: int):
    """With the rule's work threshold within reach (``reach(True)``), extract into
    ``tmp_path/cache``: the levers are ``expected``, set up in the summary, and the rows are
    within 1e-5 of a plain run's, with the same key. Then, with the threshold out of reach
    (``reach(False)``), one new image still takes the recorded levers, and the grown set's rows
    equal an uninterrupted run's. Returns the first result."""
    reach(True)  # the levers even for these 12 tiny images
    cache = tmp_path / "cache"
    first = featcache.extract(str(image_folder), cache_dir=cache, **KW)
    assert first.levers == expected and first.timings["levers_s"] > 0
    assert f"levers {expected} set up in" in first.summary()
    plain = featcache.extract(str(image_folder), cache_dir=tmp_path / "plain", compute="plain", **KW)
    assert plain.feature_key == first.feature_key and plain.levers == "plain"  # rounding only: same key
    a, b = featcache.load_features(first.view).features, featcache.load_features(plain.view).features
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()

    reach(False)  # the rule would not choose them for one new image...
    make_image(image_folder / "dog" / "new.png", seed=seed)
    grown = featcache.extract(str(image_folder), cache_dir=cache, **KW)
    assert grown.extracted == 1 and grown.levers == expected  # ...the record does
    reach(True)
    fresh = featcache.extract(str(image_folder), cache_dir=tmp_path / "fresh", **KW)  # uninterrupted, same levers
    np.testing.assert_array_equal(featcache.load_features(grown.view).features,
                                  featcache.load_features(fresh.view).features)
    return first, grown


def test_extract_records_levers_and_a_grown_run_reuses_them(image_folder, tmp_path, monkeypatch, both_levers_pay):
    def reach(on: bool):
        monkeypatch.setattr(levers, "FREEZE_MIN_WORK", 1 if on else 10**12)

    first, _ = extract_with_levers_then_grow(image_folder, tmp_path, reach, "channels_last+freeze", seed=999)
    record = json.loads((tmp_path / "cache" / "features" / first.feature_key / levers.RECORD).read_text())
    assert record["levers"] == ["channels_last", "freeze"] and record["cpu_kind"] == levers.cpu_kind()


def test_extract_with_onnxruntime_records_it_and_a_grown_run_gives_an_uninterrupted_runs_rows(
        image_folder, tmp_path, monkeypatch):
    def reach(on: bool):
        monkeypatch.setattr(levers, "cpu_table", lambda: table(wins_ort={"resnet18": 0 if on else 10**9}))

    first, grown = extract_with_levers_then_grow(image_folder, tmp_path, reach, "onnxruntime", seed=997)
    folder = tmp_path / "cache" / "features" / first.feature_key
    assert json.loads((folder / levers.RECORD).read_text())["levers"] == ["onnxruntime"]
    # the first run kept its graph; the grown run started it without building or exporting the model
    assert len(list(folder.glob("onnxruntime-*.onnx"))) == 1
    assert first.timings["export_s"] > 0 and first.timings["build_s"] > 0
    assert grown.timings["export_s"] == 0.0 and grown.timings["build_s"] == 0.0 and grown.timings["levers_s"] > 0
    assert "from the graph kept by an earlier run" in grown.summary()
    assert "kept by" not in first.summary()


GROW_IN_A_CHILD = """
import json, sys
import featcache
r = featcache.extract(sys.argv[1], cache_dir=sys.argv[2], **json.loads(sys.argv[3]))
print(json.dumps([r.extracted, r.levers, r.timings["build_s"], sorted(m for m in sys.modules if m == "torchvision")]))
"""


def test_a_grown_run_from_a_kept_graph_loads_neither_the_registry_nor_torchvision(image_folder, tmp_path,
                                                                                  monkeypatch):
    """The resolution index gives the identity and the kept graph the forward: torchvision (seconds of
    imports) is not loaded, and the rows equal an uninterrupted run's."""
    import subprocess
    import sys

    monkeypatch.setattr(levers, "cpu_table", lambda: table(wins_ort={"resnet18": 0}))
    cache = tmp_path / "cache"
    first = featcache.extract(str(image_folder), cache_dir=cache, **KW)
    assert first.levers == "onnxruntime"
    make_image(image_folder / "dog" / "new.png", seed=996)
    proc = subprocess.run([sys.executable, "-c", GROW_IN_A_CHILD, str(image_folder), str(cache), json.dumps(KW)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    extracted, chosen, build_s, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (extracted, chosen, build_s, loaded) == (1, "onnxruntime", 0.0, [])
    fresh = featcache.extract(str(image_folder), cache_dir=tmp_path / "fresh", **KW)
    np.testing.assert_array_equal(featcache.load_features(featcache.extract(str(image_folder), cache_dir=cache,
                                                                            **KW).view).features,
                                  featcache.load_features(fresh.view).features)


def test_a_remembered_identity_that_resolves_to_another_key_is_refused(tmp_path):
    from featcache.extraction.identity import RememberedIdentity
    from featcache.specs import BackboneSpec

    other = resolve_identity("resnet18", weights="none", image_size=48).identity
    remembered = RememberedIdentity(other, None, BackboneSpec(backbone="resnet18", weights="none", image_size=32),
                                    "cpu", str(tmp_path / "resolutions.sqlite"))
    with pytest.raises(FeatcacheError, match=r"resolutions\.sqlite said backbone 'resnet18' gives feature set "
                                             rf"{other.key}, but it resolves to [\w-]+ now.*delete that file"):
        remembered.entry
    same = RememberedIdentity(resolve_identity("resnet18", weights="none", image_size=32).identity, None,
                              BackboneSpec(backbone="resnet18", weights="none", image_size=32), "cpu",
                              str(tmp_path / "resolutions.sqlite"))
    assert same.entry.name == "resnet18" and same.weights.label == "none"


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "convnext_tiny", "efficientnet_b0"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_frozen_graph_loaded_back_gives_the_bits_of_the_one_frozen_in_memory(name, channels_last):
    """The first run into a set computes with the module it froze and keeps its bytes; later runs load them."""
    chosen = Levers(channels_last=channels_last, freeze=True)
    r = resolve_identity(name, weights="none", image_size=64)
    model, example = levers.in_layout(FeatureExtractor(r.entry.build(r.weights)).eval(),
                                      torch.zeros(levers.TRACE_ROWS, 3, 64, 64), chosen)
    frozen = levers.freeze_module(model, example)
    graph = levers.frozen_bytes(frozen)
    first = levers.optimized(frozen, example)
    later = levers.start_kept(graph, chosen, torch.zeros(levers.TRACE_ROWS, 3, 64, 64), advice="")
    x = levers.to_input(torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0)), chosen)
    with torch.inference_mode():
        assert torch.equal(first(x), later(x))


@pytest.fixture(params=["onnxruntime", "channels_last+freeze"])
def kept_lever(request, monkeypatch):
    """A rule that gives resnet18's 12 tiny images a lever whose graph a set keeps:
    (the levers, the kept file's glob, its suffix, what a run does without it)."""
    if request.param == "onnxruntime":
        monkeypatch.setattr(levers, "cpu_table", lambda: table(wins_ort={"resnet18": 0}))
        return request.param, "onnxruntime-*.onnx", ".onnx", "exports the model again"
    monkeypatch.setattr(levers, "cpu_table", lambda: table())
    monkeypatch.setattr(levers, "FREEZE_MIN_WORK", 1)
    return request.param, "frozen-*.pt", ".pt", "freezes the model again"


def test_a_grown_run_starts_the_kept_graph_without_building_the_model(image_folder, tmp_path, kept_lever):
    chosen, pattern, _, _ = kept_lever
    cache = tmp_path / "cache"
    first = featcache.extract(str(image_folder), cache_dir=cache, **KW)
    (graph,) = (cache / "features" / first.feature_key).glob(pattern)
    assert first.levers == chosen and first.timings["export_s"] > 0 and first.timings["build_s"] > 0
    make_image(image_folder / "dog" / "new.png", seed=994)
    grown = featcache.extract(str(image_folder), cache_dir=cache, **KW)
    assert grown.extracted == 1 and grown.levers == chosen
    assert grown.timings["export_s"] == 0.0 and grown.timings["build_s"] == 0.0
    assert "from the graph kept by an earlier run" in grown.summary()
    fresh = featcache.extract(str(image_folder), cache_dir=tmp_path / "fresh", **KW)
    np.testing.assert_array_equal(featcache.load_features(grown.view).features,
                                  featcache.load_features(fresh.view).features)


def test_a_damaged_kept_graph_is_passed_over_made_again_and_repaired(image_folder, tmp_path, kept_lever):
    from featcache.store.maintenance import gc, verify

    _, pattern, _, remakes = kept_lever
    cache = tmp_path / "cache"
    first = featcache.extract(str(image_folder), cache_dir=cache, **KW)
    (graph,) = (cache / "features" / first.feature_key).glob(pattern)
    good = graph.read_bytes()
    graph.write_bytes(good[:-64] + bytes(64))  # damaged in place: its name no longer matches its bytes
    rep = verify(cache)
    assert [p.path for p in rep.problems] == [str(graph)] and "gc --repair" in rep.problems[0].fix

    make_image(image_folder / "dog" / "new.png", seed=996)
    with pytest.warns(RuntimeWarning, match=rf"{pattern.replace('*', '.*')} is damaged.*this run {remakes}"):
        grown = featcache.extract(str(image_folder), cache_dir=cache, **KW)
    assert grown.extracted == 1 and grown.timings["export_s"] > 0
    (remade,) = graph.parent.glob(pattern)  # made again, in place of the damaged file
    if pattern.endswith(".onnx"):  # the same bytes (a TorchScript file carries a serialisation id of its own)
        assert remade == graph and graph.read_bytes() == good
    assert verify(cache).ok
    graph = remade
    fresh = featcache.extract(str(image_folder), cache_dir=tmp_path / "fresh", **KW)
    np.testing.assert_array_equal(featcache.load_features(grown.view).features,
                                  featcache.load_features(fresh.view).features)

    graph.write_bytes(b"not a graph")
    report = gc(cache, repair=True)
    assert report.removed_damaged == [str(graph)] and not graph.exists() and verify(cache).ok


def test_a_kept_graph_that_cannot_run_is_one_error_naming_the_file(image_folder, tmp_path, kept_lever):
    from featcache.store import artifacts

    chosen, pattern, suffix, remakes = kept_lever
    cache = tmp_path / "cache"
    first = featcache.extract(str(image_folder), cache_dir=cache, **KW)
    folder = cache / "features" / first.feature_key
    (graph,) = folder.glob(pattern)
    graph.unlink()
    kind = levers.graph_kind(Levers.from_names(chosen.split("+")))
    artifacts.save(folder, kind, b"intact bytes, but no graph")  # as a newer format would be
    make_image(image_folder / "dog" / "new.png", seed=995)
    with pytest.raises(FeatcacheError, match=rf"could not (run|be loaded).*delete the \*\{suffix} file in .*"
                                             rf"{first.feature_key}: the next run {remakes}"):
        featcache.extract(str(image_folder), cache_dir=cache, **KW)


def test_a_graph_that_cannot_be_kept_only_costs_a_warning(image_folder, tmp_path, monkeypatch, kept_lever):
    from featcache.store import artifacts

    chosen, pattern, _, remakes = kept_lever

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "save", full_disk)
    with pytest.warns(RuntimeWarning, match=rf"could not keep the .* graph.*No space left.*{remakes}"):
        r = featcache.extract(str(image_folder), cache_dir=tmp_path / "cache", **KW)
    assert r.levers == chosen and r.rows == 12
    assert not list((tmp_path / "cache" / "features" / r.feature_key).glob(pattern))


def test_a_frozen_graph_torchscript_cannot_save_only_costs_a_warning(image_folder, tmp_path, monkeypatch,
                                                                     both_levers_pay):
    def unsaveable(module, f):
        raise RuntimeError("Could not export Python function call 'Custom'")

    monkeypatch.setattr(levers, "FREEZE_MIN_WORK", 1)
    monkeypatch.setattr(torch.jit, "save", unsaveable)
    with pytest.warns(RuntimeWarning, match=r"could not save the frozen graph \(RuntimeError: Could not export.*"
                                            r"the next run into this feature set freezes the model again"):
        r = featcache.extract(str(image_folder), cache_dir=tmp_path / "cache", **KW)
    assert r.levers == "channels_last+freeze" and r.rows == 12
    assert not list((tmp_path / "cache" / "features" / r.feature_key).glob("frozen-*"))


def test_compute_plain_into_a_set_computed_with_levers_is_refused(image_folder, cache_dir, both_levers_pay):
    featcache.extract(str(image_folder), cache_dir=cache_dir, **KW)
    make_image(image_folder / "dog" / "new.png", seed=998)
    with pytest.raises(FeatcacheError, match="--compute plain"):
        featcache.extract(str(image_folder), cache_dir=cache_dir, compute="plain", **KW)


def test_cli_offers_compute_and_rejects_unknown_modes(image_folder, cache_dir):
    from click.testing import CliRunner

    from featcache.cli import cli

    args = ["extract", "--data", str(image_folder), "--backbone", "resnet18", "--weights", "none",
            "--image-size", "32", "--workers", "0", "--cache", str(cache_dir)]
    bad = CliRunner().invoke(cli, [*args, "--compute", "fast"])
    assert bad.exit_code != 0 and "auto" in bad.output and "plain" in bad.output
    ok = CliRunner().invoke(cli, [*args, "--compute", "plain", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["levers"] == "plain"


@pytest.mark.parametrize("flags,native", [("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True),
                                          ("fpu amx_bf16 amx_tile", True), ("", False)])
def test_bf16_support_is_read_from_the_cpu_flags(flags, native):
    assert devices.cpu_bf16_native(f"processor\t: 0\nflags\t\t: {flags}\n") is native


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_on_a_cpu_that_emulates_it_warns_before_the_forward(tmp_path, monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: native)
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    make_image(folder / "0.png", seed=0)
    kw = dict(KW, precision="bfloat16", cache_dir=tmp_path / "cache")
    if native:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            featcache.extract(str(tmp_path / "imgs"), **kw)
    else:
        with pytest.warns(RuntimeWarning, match="bfloat16: this CPU has neither AVX512-BF16 nor AMX.*float32"):
            featcache.extract(str(tmp_path / "imgs"), **kw)


def test_the_table_run_gives_onnxruntime_its_break_even_from_the_same_row():
    """Extra set-up over the best torch variant / seconds saved an image, at 224 px, in 16s."""
    lt = load_script(RESULTS.parent / "lever_table.py")
    assert lt.FREEZE_MIN_IMAGES * levers.PX_224 == levers.FREEZE_MIN_WORK

    def row(size, ort_ips, ort_setup):
        def v(ips, setup):
            return {"error": None, "img_per_s": ips, "setup_s": setup, "max_rel_diff": 0.0, "max_rel_diff_other_batch": 0.0}
        return {"size": size, "variants": {"plain": v(10.0, None), "cl": v(8.0, None), "freeze": v(20.0, 1.0),
                                           "cl_freeze": v(16.0, 1.5), "onnxruntime": v(ort_ips, ort_setup)}}

    d = lt.decide(row(224, 25.0, 5.0))  # 4 s more set-up, 10 ms saved an image: 400 images
    assert d["best"] == "onnxruntime" and d["onnxruntime_min_images"] == 400
    assert lt.decide(row(112, 25.0, 5.0))["onnxruntime_min_images"] == 112  # 400 at 112 px is 100 at 224: 112
    assert lt.decide(row(224, 25.0, 0.5))["onnxruntime_min_images"] == lt.FREEZE_MIN_IMAGES  # cheaper to set up
    assert lt.decide(row(224, 20.0, 9.0))["onnxruntime_min_images"] == 10**9  # a tie never repays it
    slower = lt.decide(row(224, 19.0, 0.5))
    assert slower["best"] == "freeze" and not slower["onnxruntime"] and slower["onnxruntime_min_images"] is None
    assert lt.sets([{"backbone": "b", "decision": d}])["WINS_ONNXRUNTIME"] == {"b": 400}


def test_a_vit_exports_to_onnxruntime_with_attention_as_plain_operators():
    """nn.MultiheadAttention's inference fast path is one fused operator without an ONNX form:
    the export runs without it (and leaves it as it was); the rows match eager's."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    model = FeatureExtractor(vit).eval()
    x = torch.randn(12, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        fast = levers.prepare(model, Levers(onnxruntime=True), x[:levers.TRACE_ROWS])
        whole, alone = fast(x), fast(x[5:6])
    assert torch.backends.mha.get_fastpath_enabled()
    assert float((whole - ref).abs().max() / ref.abs().max()) <= 1e-5
    assert torch.equal(whole[5:6], alone)
