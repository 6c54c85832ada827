"""The benchmark scripts run end to end with their smallest settings and write the expected JSON.

Each script runs as a subprocess (as a user would run it) with ``--quick`` and ``--out`` in a
temporary folder; generated images go to a temporary folder too (``FEATCACHE_BENCH_DATA``).
Only the shape of the output is checked here, not the speed: the numbers of a smoke run on a
busy CI machine mean nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.slow


def run_script(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "results"
    env = {**os.environ, "FEATCACHE_BENCH_DATA": str(tmp_path / "data"), "FEATCACHE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out", str(out), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "==" in proc.stdout  # the printed table
    assert (out / f"{name}.png").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    res = json.loads((out / f"{name}.json").read_text())
    assert res["benchmark"] == name
    assert res["machine"]["cpu_model"] and res["machine"]["usable_cores"] >= 1
    assert res["command"] and res["settings"]["quick"] is True
    return res


def test_compare_heads(tmp_path):
    from featcache.train.heads import list_heads

    res = run_script("compare_heads", tmp_path)
    assert res["extraction"]["wall_s"] > 0 and res["extraction"]["rows"] == 300
    heads = {r["head"]: r for r in res["rows"]}
    assert set(heads) == set(list_heads())
    for r in heads.values():
        for k in ("test_accuracy", "balanced_accuracy", "macro_f1", "fit_s", "predict_s", "fit_over_extract"):
            assert isinstance(r[k], float), (r["head"], k)
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["verdict"] in ("PASS", "MISS")
        assert r["goal"] == (0.05 if r["head"] == "mlp" else 0.01)
    assert len(res["runs"]) == len(heads) * res["settings"]["repeats"]


def test_extract_throughput(tmp_path):
    res = run_script("extract_throughput", tmp_path)
    s = res["summary"]
    assert s["efficiency_median"] > 0 and s["speedup_vs_tutorial_median"] > 0
    assert s["efficiency_verdict"] in ("PASS", "MISS") and s["rss_growth_verdict"] in ("PASS", "MISS")
    methods = {(r["method"], r["n"]) for r in s["rows"]}
    assert methods == {("model", 60), ("ours", 60), ("tutorial", 60), ("ours", 20), ("tutorial", 20)}
    for r in s["rows"]:
        assert r["img_per_s"] > 0 and r["tree_peak_rss_mb"] > 0
    for k in ("decode_s", "wait_s", "forward_s", "write_s", "total_s"):
        assert s["ours_profile_median_s"][k] is not None
    assert set(s["rss_growth_mb"]) == {"ours", "tutorial"}


def test_cache_reuse(tmp_path):
    res = run_script("cache_reuse", tmp_path)
    run = res["runs"][0]
    assert run["warm_cache_hit"] is True and run["warm_model_built"] is False and run["warm_builds"] == 0
    assert run["warm_new_process"]["model_built"] is False
    assert run["grown_extracted"] == res["settings"]["added"] == 30
    assert run["grown_reused"] == res["settings"]["images"] == 300
    steps = [r["step"] for r in res["rows"]]
    assert steps[0] == "cold extraction" and len(steps) == 5
    for k in ("cold_s", "warm_s", "grown_s", "head_s", "grown_over_cold"):
        assert res["median"][k] > 0


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_scale(tmp_path):
    res = run_script("scale", tmp_path, "--repeats", "2")
    assert res["complete"] is True and res["settings"]["repeats"] == 2
    ex = res["extraction"]
    assert ex["rows"] == 140 and ex["img_per_s"] > 0 and ex["store_view_bytes_per_row"] > 0
    assert {h["head"] for h in res["heads"]} == {"ncm", "knn", "logreg"}
    for h in res["heads"]:
        assert 0.0 <= h["test_accuracy"] <= 1.0 and h["fit_s"] >= 0
        assert len(h["fit_s_all"]) == len(h["predict_s_all"]) == 2  # the reported times: their medians
        assert h["fit_s"] == pytest.approx(sum(h["fit_s_all"]) / 2)
    assert res["raw_pixels"]["features"] == "raw pixels 784-d" and res["raw_pixels"]["test_accuracy"] > 0
    assert "arXiv:1708.07747" in res["published_source"]


def test_extract_throughput_cpu_section(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "FEATCACHE_BENCH_DATA": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, str(BENCH / "extract_throughput.py"), "--cpu-section", "--quick", "--out",
                           str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    res = json.loads((out / "extract_throughput_cpu.json").read_text())
    (row,) = res["summary"]
    assert row["backbone"] == "resnet18" and row["repeats"] == 1 and row["levers"]
    for k in ("ours", "plain_model", "levers_model", "tutorial", "ours_vs_plain", "ours_vs_tutorial"):
        assert row[k] > 0, k
    assert row["max_rel_diff"] <= 1e-5
    assert res["decode"]["160x120"]["full_ms"] > 0


def test_lever_table(tmp_path):
    res = run_script("lever_table", tmp_path, "--partial", str(tmp_path / "partial.jsonl"), "--name", "lever_table")
    (row,) = res["rows"]
    assert row["backbone"] == "mobilenet_v3_small"
    assert set(row["variants"]) == {"plain", "cl", "freeze", "cl_freeze", "onnxruntime"}
    assert row["variants"]["onnxruntime"]["max_rel_diff"] <= 1e-5
    assert row["decision"]["measured"] and row["decision"]["best_vs_plain"] >= 1.0
    assert res["sets"]["MEASURED"] == ["mobilenet_v3_small"]
    assert set(res["sets"]["WINS_ONNXRUNTIME"]) <= {"mobilenet_v3_small"}


def test_heap_reuse(tmp_path):
    res = run_script("heap_reuse", tmp_path, "--partial", str(tmp_path / "partial.jsonl"))
    (row,) = res["rows"]
    assert row["backbone"] == "mobilenet_v3_small" and row["identical"] and row["off_s"] > 0 and row["on_s"] > 0
    assert res["summary"]["measured"] == 1 and res["summary"]["not_identical"] == []


def test_cli_latency(tmp_path):
    res = run_script("cli_latency", tmp_path)
    rows = {r["command"]: r for r in res["rows"]}
    assert {"floor bare", "floor sklearn", "help", "results", "extract (warm)", "fit-head logreg", "fit-head linear",
            "predict (cached)", "predict (new images)", "run (all cached)"} == set(rows)
    assert all(r["wall_s"] > 0 for r in rows.values()) and len(res["runs"]) == 1
    assert "new-{repeat}" in res["commands"]["predict (new images)"]
    for name in ("help", "results", "extract (warm)", "fit-head logreg", "run (all cached)"):
        assert rows[name]["verdict"] in ("PASS", "MISS") and rows[name]["ratio"] > 0


CLIPART_SOURCE = Path("/usr/share/openclipart/png")


@pytest.mark.skipif(not CLIPART_SOURCE.is_dir(), reason="Debian's openclipart-png is not installed")
def test_transfer(tmp_path):
    res = run_script("transfer", tmp_path, "--heads", "ncm")
    assert [r["method"] for r in res["rows"]] == [
        "cached features + ncm", "cached features + logreg", "raw pixels + logreg", "small CNN from scratch",
        "fine-tuned end to end"]
    assert "random-init" in res["rows"][1]["features"] and res["settings"]["n_images"] == 48
    for r in res["rows"]:
        lo, hi = r["test_accuracy_ci95"]
        assert 0.0 <= lo <= r["test_accuracy"] <= hi <= 1.0 and r["wall_s"] > 0 and r["n_test"] == 12


def test_transfer_skips_cleanly_without_the_package(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(BENCH / "transfer.py"), "--source", str(tmp_path / "missing"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "skipped" in proc.stdout and "apt-get install openclipart-png" in proc.stdout
    assert not out.exists()


def test_gpu_check_script_is_valid_and_its_steps_exist(monkeypatch):
    """benchmarks/gpu_check.sh runs only where a GPU is lent: here, that it parses, that the test
    files it names exist and select CUDA tests, and that its benchmark flags are accepted."""
    import re

    script = BENCH / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    files = re.findall(r"tests/\w+\.py", text)
    assert files and all((ROOT / f).is_file() for f in files), files
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *files, "-k",
                             "nvjpeg or gpu or cuda"], cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 0 and sum("::" in line for line in listed.stdout.splitlines()) >= 4, listed.stdout
    monkeypatch.syspath_prepend(str(BENCH))
    import extract_throughput

    a = extract_throughput.parse(["--full", "--sizes", "4000", "--repeats", "2", "--decode", "device"])
    assert (a.backbone, a.sizes, a.repeats, a.decode, a.batch_size) == ("resnet50", [4000], 2, "device", 128)


def test_knn_gemm(tmp_path):
    res = run_script("knn_gemm", tmp_path)
    s = res["summary"]
    assert s["same_labels"] is True and s["predict_s_torch"] > 0 and s["predict_s_numpy"] > 0
    assert s["rule_picks"] in ("torch", "numpy") and {r["mode"] for r in res["runs"]} == {"torch", "numpy"}


def test_head_floors(tmp_path):
    res = run_script("head_floors", tmp_path)
    rates, rows = res["rates"], {r["goal"]: r for r in res["rows"]}
    assert rates["peak_gflops"] > 0 and rates["pass_s"] > 0 and rates["read_s"] > 0
    assert {"logreg fit", "svm fit", "mlp fit", "mlp sweep", "linear fit", "knn predict"} <= set(rows)
    # the mlp's default sweep trains 9 networks of 256, 512 and 1,024 units: 10.5x the fit's widths
    assert rows["mlp sweep"]["gmac"] == pytest.approx(10.5 * rows["mlp fit"]["gmac"], rel=0.01)
    for name in ("logreg fit", "svm fit"):  # their passes at the measured pass's rate
        assert rows[name]["floor_shape_s"] == pytest.approx(rows[name]["passes"] * rates["pass_s"])
    for r in rows.values():
        assert r["floor_peak_s"] == pytest.approx(2 * r["gmac"] / rates["peak_gflops"])
        assert r["reachable"] is (r["floor_peak_s"] <= r["allowed_s"])
