"""Hard-negative batches: look-alikes by caption words, runs of them, same content kept apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dbprompt.data.records import Record
from dbprompt.training.trainer import epoch_plan
from dbprompt_lab.batches import find_look_alikes, grouped_order

COLOURS = ("red", "blue", "green", "pink")
SHAPES = ("circle", "square", "star", "heart")


def _records(captions: list[str]) -> list[Record]:
    return [Record(key=str(i), path=Path(f"{i}.png"), captions=(c,)) for i, c in enumerate(captions)]


def _families() -> list[Record]:
    """Four families of four: within a family only the colour differs, across families the shape and place."""
    places = {"circle": "at the top left", "square": "in the middle", "star": "at the bottom", "heart": "on the right"}
    return _records([f"a {c} {s} {places[s]}" for s in SHAPES for c in COLOURS])


def test_nearest_captions_are_the_ones_differing_in_one_word():
    records = _families()
    found = find_look_alikes(records, 3)
    for i, row in enumerate(found.neighbours):
        assert {int(j) // 4 for j in row} == {i // 4}, records[i].captions
        assert i not in row


def test_same_words_are_one_content_and_never_neighbours():
    records = _records(["a red circle at the top", "at the top a red circle", "a blue circle at the top", "a red star below"])
    found = find_look_alikes(records, 3)
    assert found.content[0] == found.content[1] != found.content[2]
    assert 1 not in found.neighbours[0][:2] and 0 not in found.neighbours[1][:2]
    order = grouped_order(found, 4, np.random.default_rng(0))
    assert sorted(order) == [0, 1, 2, 3]


def test_grouped_order_is_a_permutation_of_look_alike_runs():
    records = _families()
    found = find_look_alikes(records, 8)
    for seed in range(5):
        order = grouped_order(found, 4, np.random.default_rng(seed))
        assert sorted(order.tolist()) == list(range(16))
        runs = [order[i : i + 4] for i in range(0, 16, 4)]
        assert all(len({int(j) // 4 for j in run}) == 1 for run in runs), order


def test_epoch_plan_with_look_alikes_is_a_function_of_seed_and_epoch():
    records = _families()
    found = find_look_alikes(records, 8)

    def order(rng, n):
        return grouped_order(found, 4, rng)

    a, _ = epoch_plan(records, 0, 1, order)
    b, _ = epoch_plan(records, 0, 1, order)
    c, _ = epoch_plan(records, 0, 2, order)
    plain, _ = epoch_plan(records, 0, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, plain)
