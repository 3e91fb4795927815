"""The attribute probe swaps exactly one word and scores a backbone's eyes for each attribute."""

from __future__ import annotations

import torch

from dbprompt.backbones import load_backbone
from dbprompt.data import load_database
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt_lab import proxy
from dbprompt_lab.probe import VOCABULARY, probe, swaps
from dbprompt_lab.world import write_database


def test_swaps_replace_the_first_attribute_word_only():
    out = swaps("a red star and a red circle", ("red", "blue", "green"))
    assert out == ["a blue star and a red circle", "a green star and a red circle"]
    assert swaps("a redder star", ("red", "blue")) == []  # whole words only


def test_the_shipped_proxy_sees_colour_and_a_random_one_does_not(tmp_path):
    db = write_database(tmp_path / "db", 24, domain="source", seed=proxy.TEST_SEED, image_size=64)
    records = load_database(db).records
    with torch.no_grad():
        seen = probe(PromptedCLIP(load_backbone(proxy.NAME), PromptConfig.none()).eval(), records, VOCABULARY["proxy"])
        blind = probe(PromptedCLIP(load_backbone(proxy.NAME, "random"), PromptConfig.none()).eval(), records, VOCABULARY["proxy"])
    assert seen["colour"]["captions"] == 24 and seen["colour"]["true_wins"] >= 0.9
    assert blind["colour"]["true_wins"] < 0.8
