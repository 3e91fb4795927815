"""The attribute probe swaps exactly one word and scores a backbone's eyes for each attribute."""

from __future__ import annotations

import torch

from dbprompt.backbones import load_backbone
from dbprompt.data import load_database
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt_lab import proxy
from dbprompt_lab.probe import VOCABULARY, linear_accuracy, linear_probe, probe, single_shape_images, swaps
from dbprompt_lab.world import write_database
from dbprompt_lab.world.broad import scene as broad_scene


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
    # The trained text tower tells colour words apart; random weights embed a swap almost as the caption.
    assert seen["colour"]["text_cosine"] < 0.85 < blind["colour"]["text_cosine"] <= 1.0


def test_single_shape_images_turn_through_the_shapes_and_are_drawn_alike_again():
    images, labels = single_shape_images("broad", 30, 96, seed=3)
    again, _ = single_shape_images("broad", 30, 96, seed=3)
    assert len(images) == 30 and images[0].shape == (96, 96, 3) and list(labels) == ["shape", "colour", "size", "style"]
    assert labels["shape"][: len(broad_scene.SHAPES)] == list(broad_scene.SHAPES)
    assert all((a == b).all() for a, b in zip(images, again))
    _, proxy_labels = single_shape_images("proxy", 8, 64)
    assert list(proxy_labels) == ["shape", "colour", "size"]


def test_linear_accuracy_reads_an_attribute_the_features_carry_and_not_one_they_do_not():
    torch.manual_seed(0)
    values = [f"v{i % 4}" for i in range(400)]
    carried = torch.nn.functional.one_hot(torch.tensor([i % 4 for i in range(400)]), 8).double()
    carried += 0.1 * torch.randn(400, 8, dtype=torch.double)
    assert linear_accuracy(carried, values) == 1.0
    assert linear_accuracy(torch.randn(400, 8, dtype=torch.double), values) < 0.45  # chance 0.25


def test_the_shipped_proxy_carries_colour_in_its_image_features_and_a_random_one_less():
    with torch.no_grad():
        seen = linear_probe(PromptedCLIP(load_backbone(proxy.NAME), PromptConfig.none()).eval(), "proxy", 320)
        blind = linear_probe(PromptedCLIP(load_backbone(proxy.NAME, "random"), PromptConfig.none()).eval(), "proxy", 320)
    assert seen["colour"]["chance"] == 1 / 8 and seen["colour"]["accuracy"] >= 0.9
    assert blind["colour"]["accuracy"] < seen["colour"]["accuracy"] - 0.2
