"""The index benchmarks (bench_bigindex, bench_ray, bench_onnx_index) run end to end at a tiny size against today's dbprompt.

They lived in the product's index tests until the lab moved out: the scripts are lab code, what
they measure (the ivfpq index, `dbprompt index --ray`) is tested in the product's own tests.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from dbprompt.backbones import BackboneAdapter
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime
from dbprompt_lab.benchmarks import bench_bigindex, bench_onnx_index, bench_ray, bench_search


@pytest.fixture
def prompts(tmp_path: Path, tiny_backbone: BackboneAdapter) -> Path:
    """A prompt file of the tiny backbone: the index benchmark stores it with its synthetic vectors."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, vocab=0, visual_adapter=0))
    return model.save_prompt_file(tmp_path / "a.safetensors")


def test_bench_bigindex_runs_at_a_tiny_size(tmp_path, prompts, monkeypatch, capsys):
    argv = ["bench_bigindex", "--n", "3000", "--kind", "ivfpq", "--queries", "20", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", argv + ["--prompts", str(prompts), "--dir", str(tmp_path)])
    bench_bigindex.main()
    out = capsys.readouterr().out
    assert "3,000 vectors: ivfpq (IVF" in out and "| 3,000 | IVF" in out
    recall = float(out.split("| 3,000 | ")[1].split(" | ")[2])
    assert recall >= 0.9


def test_bench_search_end_to_end_searches_an_index_whose_files_exist(tmp_path, prompts, tiny_backbone):
    """Its rows name real files (else every query measures a collection moved away), and it searches with
    the backbone it holds (an index recording random weights is not loaded from the record)."""
    dim = PromptedCLIP(tiny_backbone, PromptConfig.none()).encode_texts(["x"]).shape[1]
    lines = bench_search.bench_end_to_end(tmp_path, prompts, ["a red circle", "a blue square"], 300, dim, Runtime(), tiny_backbone)
    assert len(lines) == 5 and all(p.is_file() for p in (tmp_path / "e2e-images").iterdir())
    assert sum(1 for _ in (tmp_path / "e2e-images").iterdir()) == 300


@pytest.mark.slow  # starts a local Ray instance, three times
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is an optional extra: pip install 'dbprompt[ray]'")
def test_bench_ray_runs_at_a_small_size(monkeypatch, capsys):
    argv = ["bench_ray", "--images", "60", "--model", "dbprompt-tiny", "--part", "10", "--batch", "8"]
    monkeypatch.setattr(sys, "argv", argv)
    bench_ray.main()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] + line.split()[1] for line in lines[2:5]] == ["oneprocess", "ray1", "ray2"]
    assert all("img/s" in line for line in lines[2:5]) and lines[5].startswith("ray 2 / ray 1")


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="ONNX is an optional extra: pip install 'dbprompt[onnx]'")
def test_bench_onnx_index_runs_at_a_tiny_size(monkeypatch, capsys):
    argv = ["bench_onnx_index", "--model", "dbprompt-tiny", "--images", "24", "--queries", "4", "--threads", "1", "--workers", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    bench_onnx_index.main()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:5]] == [["torch", "fp32"], ["onnx", "fp32"], ["onnx", "int8"], ["onnx", "auto"]]
    assert lines[1].split()[6] == lines[2].split()[6] == "1.000"  # onnx fp32 finds torch's top-10
    assert any(line.startswith("log: ONNX precision") for line in lines)


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="ONNX is an optional extra: pip install 'dbprompt[onnx]'")
def test_bench_onnx_times_openvino_beside_onnx_runtime(monkeypatch, capsys):
    from dbprompt_lab.benchmarks import bench_onnx

    monkeypatch.setattr(sys, "argv", ["bench_onnx", "--models", "dbprompt-tiny", "--images", "48", "--queries", "4",
                                      "--threads", "1", "--batch", "8", "--openvino", "--json"])
    bench_onnx.main()
    row = json.loads(capsys.readouterr().out)[0]["rows"][0]
    # OpenVINO compiles the same fp32 export: at its fp32 precision it ranks (near enough) as PyTorch does.
    assert row["ov_f32_images_s"] > 0 and row["agreement_ov_f32"] >= 0.9  # chance: 10 of 48
    assert ("ov_bf16_images_s" in row) == ("bf16" in bench_onnx.openvino_precisions())


def test_bench_text_groups_times_both_ways_and_they_agree(monkeypatch, capsys):
    import re

    from dbprompt_lab.benchmarks import bench_text_groups

    argv = ["bench_text_groups", "--model", "dbprompt-tiny", "--batch", "260", "--repeats", "1", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    bench_text_groups.main()
    out = capsys.readouterr().out
    assert re.search(r"one pass: [\d.]+ s   groups of 128: [\d.]+ s", out)
    assert float(re.search(r"largest feature difference ([\d.e+-]+)", out).group(1)) < 1e-5
