"""The shipped proxy backbone loads offline by name and reproduces its recorded source R@1."""

from __future__ import annotations

import json

import pytest

from dbprompt import proxy
from dbprompt.backbones import load_backbone, shipped_weights


def test_proxy_ships_and_loads_by_name():
    assert shipped_weights(proxy.NAME) == proxy.WEIGHTS
    assert proxy.WEIGHTS.stat().st_size <= 30 * 2**20
    backbone = load_backbone(proxy.NAME)
    assert backbone.pretrained == proxy.NAME
    assert backbone.image_size == (64, 64) and backbone.context_length >= 56
    assert backbone.fingerprint() == load_backbone(proxy.NAME).fingerprint()
    assert backbone.fingerprint() != load_backbone(proxy.NAME, "random").fingerprint()


def test_proxy_reproduces_its_recorded_source_recall(tmp_path):
    recorded, now = proxy.check(tmp_path)
    assert recorded == json.loads(proxy.RECORD.read_text())["source_test_metrics"]["clip_benchmark/t2i_R@1"]
    assert now == pytest.approx(recorded, abs=1.0)
