"""The lab's --weights/--pretrained options: a missing file is one line before any work, and the measuring
scripts read a pre-training checkpoint as they read weights (to follow a pre-training as it goes)."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from dbprompt.backbones import RANDOM, load_backbone
from dbprompt_lab import proxy
from dbprompt_lab.benchmarks import attribute_probe, bench_labels, bench_marks


def test_a_missing_weights_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match="no such weights file"):
        proxy.weights_file(str(tmp_path / "nope.safetensors"))
    assert proxy.weights_file(RANDOM) == RANDOM and proxy.plain_weights_file(RANDOM) == RANDOM
    for script, option in ((attribute_probe, "--weights"), (bench_labels, "--pretrained"), (bench_marks, "--pretrained")):
        monkeypatch.setattr(sys, "argv", [script.__name__, option, str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "out")]
                            if script is not attribute_probe else [script.__name__, option, str(tmp_path / "nope.safetensors")])
        with pytest.raises(SystemExit) as stop:
            script.main()
        assert stop.value.code == 2 and "no such weights file" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_a_pretraining_checkpoint_is_read_where_the_lab_measures_and_refused_where_dbprompt_runs(pretrain_tiny_a, tmp_path, monkeypatch, capsys):
    assert pretrain_tiny_a(tmp_path / "run") == 0
    checkpoint, weights = tmp_path / "run" / "checkpoint.safetensors", tmp_path / "run" / "tiny-a.safetensors"
    assert checkpoint.is_file() and weights.is_file()
    assert proxy.plain_weights_file(str(weights)) == str(weights)
    with pytest.raises(argparse.ArgumentTypeError, match="pre-training checkpoint"):
        proxy.plain_weights_file(str(checkpoint))
    trained = proxy.load_weights("tiny-a", str(checkpoint)).fingerprint()
    assert trained != load_backbone("tiny-a", RANDOM).fingerprint()
    monkeypatch.setattr(bench_labels, "SPLITS", {"train": (0, None), "val": (1, 2), "test": (2, 2)})
    monkeypatch.setattr(sys, "argv", ["bench_labels", "--worlds", "source", "--methods", "zero-shot", "--per-class", "2", "--epochs", "1",
                                      "--model", "tiny-a", "--pretrained", str(checkpoint), "--out", str(tmp_path / "labels")])
    bench_labels.main()
    assert "| source | zero-shot |" in capsys.readouterr().out
    (saved,) = (tmp_path / "labels" / "runs").iterdir()
    assert json.loads(saved.read_text())["backbone"] == trained
