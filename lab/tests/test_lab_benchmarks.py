"""Every benchmark script still runs against today's API: each `main` end to end, at a tiny size.

The scripts are run by hand, rarely, so an API change that breaks one would otherwise go unseen
until someone needs its numbers (BENCHMARKS.md quotes them).
"""

from __future__ import annotations

import collections
import functools
import importlib
import pkgutil
import sys

import pytest

import dbprompt_lab.benchmarks
from dbprompt_lab import bench, proxy
from dbprompt_lab.benchmarks import (
    bench_precision,
    bench_search,
    bench_world,
    proxy_errors,
    run_parts,
    temperature,
    validation_gallery,
)

# The method comparison shrunk to seconds: 16 training images, the tiny random-weight backbone.
TINY = functools.partial(
    bench.BenchConfig,
    model="dbprompt-tiny",
    sizes=(16,),
    pool=16,
    val_images=8,
    test_images=8,
    epochs={16: 1},
    image_size=16,
    batch_size=8,
)


@pytest.fixture(scope="module")
def methods_dir(tmp_path_factory):
    """One comparison output folder, so the target databases are written once for all scripts."""
    return tmp_path_factory.mktemp("methods")


def run_main(module, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    module.main()


def test_every_benchmark_module_imports():
    names = [m.name for m in pkgutil.iter_modules(dbprompt_lab.benchmarks.__path__)]
    assert {"bench_precision", "bench_search", "run_parts", "temperature", "validation_gallery"} <= set(names)
    for name in names:
        assert callable(importlib.import_module(f"dbprompt_lab.benchmarks.{name}").main)


def test_bench_precision(monkeypatch, capsys, one_thread):
    run_main(bench_precision, monkeypatch, "--model", "dbprompt-tiny", "--batch", "4", "--repeats", "1")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: AMX tiles")
    assert len([line for line in lines if "pairs/s" in line]) == 2 * len(bench_precision.SETTINGS)


def test_bench_search(monkeypatch, capsys, one_thread):
    monkeypatch.setattr(bench_search, "END_TO_END", 400)
    # Full collections between the large runs' indexes took most of this tiny one's time.
    monkeypatch.setattr(bench_search.gc, "collect", lambda: 0)
    argv = ["--models", "dbprompt-tiny", "--images", "8", "--batch-size", "8", "--sizes", "300", "--queries", "3"]
    run_main(bench_search, monkeypatch, *argv)
    out = capsys.readouterr().out
    for title in ("indexing", "query text encoding", "end to end", "Vector search"):
        assert title in out
    assert "| `build_index` end to end |" in out and "| HNSW32,Flat |" in out


def test_proxy_errors(monkeypatch, capsys, tmp_path, one_thread):
    monkeypatch.setattr(proxy, "TEST_IMAGES", 20)
    run_main(proxy_errors, monkeypatch, "--work-dir", str(tmp_path), "--top", "3")
    assert capsys.readouterr().out.startswith("T2I R@1 ")


def test_run_parts(monkeypatch, capsys, methods_dir, one_thread):
    monkeypatch.setattr(bench, "BenchConfig", TINY)
    run_main(run_parts, monkeypatch, "--n", "16", "--data", str(methods_dir), "--methods", "zero-shot", "dbprompt")
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"zero-shot", "dbprompt"}
    # Every timed part is found and entered by a trained method (that it ran, not how long, is checked).
    seconds: dict[str, float] = collections.defaultdict(float)
    cfg = TINY()
    data = bench.target_splits(methods_dir, "visual", cfg)
    bench.run_one(run_parts.METHODS["dbprompt"], data["train"][:16], data["val"], data["test"], cfg, 16, 0, phase=run_parts.timed_parts(seconds))
    assert sorted(seconds) == ["before", "forward", "test", "validation"]


def test_temperature(monkeypatch, capsys, methods_dir, one_thread):
    monkeypatch.setattr(temperature, "BenchConfig", TINY)
    run_main(temperature, monkeypatch, "--n", "16", "--out", str(methods_dir))
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| {shift}" for shift in TINY().shifts]


def test_validation_gallery(monkeypatch, capsys, methods_dir, one_thread):
    monkeypatch.setattr(validation_gallery, "BenchConfig", TINY)
    run_main(validation_gallery, monkeypatch, "--n", "16", "--out", str(methods_dir), "--calibrate-temperature")
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split()[0]) for line in lines[2:]] == [0, 1]  # epoch 0 and the one epoch trained


def test_bench_world(monkeypatch, capsys, tmp_path):
    run_main(bench_world, monkeypatch, "--images", "8", "--size", "16", "--dir", str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [*bench_world.DOMAINS, "files"]


def test_bench_onnx_recall(methods_dir, one_thread):
    from dbprompt_lab.benchmarks.bench_onnx_recall import measure

    rows = {r["runtime"]: r for r in measure(TINY(shifts=("visual",)), "visual", 16, 0, methods_dir)}
    assert list(rows) == ["torch fp32", "onnx fp32", "onnx int8"]
    assert rows["torch fp32"]["top10_kept"] == 1.0 and rows["onnx fp32"]["t2i_R@1"] == rows["torch fp32"]["t2i_R@1"]
    assert all(0.0 <= r["top10_kept"] <= 1.0 and 0.0 <= r["t2i_R@1"] <= 100.0 for r in rows.values())
