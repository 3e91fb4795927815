"""The shipped proxy backbone loads offline by name and reproduces its recorded source R@1."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dbprompt.backbones import load_backbone, shipped_weights
from dbprompt.data import records_for
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.training.trainer import Trainer
from dbprompt_lab import proxy


def test_proxy_ships_and_loads_by_name():
    assert shipped_weights(proxy.NAME) == proxy.WEIGHTS
    assert proxy.WEIGHTS.stat().st_size <= 30 * 2**20
    backbone = load_backbone(proxy.NAME)
    assert backbone.pretrained == proxy.NAME
    assert backbone.image_size == (64, 64) and backbone.context_length >= 56
    assert backbone.fingerprint() == load_backbone(proxy.NAME).fingerprint()
    assert backbone.fingerprint() != load_backbone(proxy.NAME, "random").fingerprint()


@pytest.mark.slow  # writes and evaluates the proxy's whole test world: ~13 s on one core
def test_proxy_reproduces_its_recorded_source_recall(tmp_path):
    recorded, now = proxy.check(tmp_path)
    assert recorded == json.loads(proxy.RECORD.read_text())["source_test_metrics"]["clip_benchmark/t2i_R@1"]
    assert now == pytest.approx(recorded, abs=1.0)


def test_pretraining_learns_the_backbone_s_own_temperature(tiny_records):
    # The shipped weights were pre-trained so: the calibrated temperature is for adaptation.
    backbone = load_backbone("dbprompt-tiny")
    backbone.requires_grad_(True)
    trainer = Trainer(
        PromptedCLIP(backbone, PromptConfig.none()),
        records_for(tiny_records, "train"),
        [],
        replace(proxy.RECIPE, epochs=1, batch_size=8),
        progress=False,
        log=lambda _: None,
    )
    assert trainer.loss.scale is backbone.logit_scale and "loss.logit_scale" not in trainer.named
    before = float(backbone.logit_scale.detach())
    assert trainer.run().finished and float(backbone.logit_scale.detach()) != before


def test_every_proxy_recipe_backpropagates_every_image():
    # Both proxies learn from scratch; prompt training's --image-backward default (a share of a step's
    # images) must not leak into their recipes (the shipped weights were made with every image).
    assert [p.recipe.image_backward for p in proxy.PROXIES.values()] == [1.0] * len(proxy.PROXIES)
