"""Shape twins: pairs of proxy-world images alike but for one shape's kind, kept in one batch, and pre-training
on them from given weights."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dbprompt.training.trainer import Trainer
from dbprompt_lab.batches import pair_order
from dbprompt_lab.world import broad, sample, write_database
from dbprompt_lab.world.captions import SYNONYMS
from dbprompt_lab.world.scene import SHAPES

SHAPE_WORDS = set(SHAPES) | {w for s in SHAPES for w in SYNONYMS.get(s, ())} | {"a", "an"}


def test_twins_differ_in_one_shape_s_kind_and_in_nothing_else():
    for p in range(30):
        a, b = sample(2 * p, twins=True), sample(2 * p + 1, twins=True)
        assert a.scene.background == b.scene.background and len(a.scene.shapes) == len(b.scene.shapes)
        changed = [(x, y) for x, y in zip(a.scene.shapes, b.scene.shapes) if x != y]
        assert len(changed) == 1 and changed[0][0].kind != changed[0][1].kind
        assert replace(changed[0][0], kind=changed[0][1].kind) == changed[0][1]
        assert (a.image != b.image).any()
        for ca, cb in zip(a.captions, b.captions, strict=True):
            wa, wb = ca.split(), cb.split()
            assert ca != cb and len(wa) == len(wb)
            assert {x for x, y in zip(wa, wb) if x != y} | {y for x, y in zip(wa, wb) if x != y} <= SHAPE_WORDS
    assert sample(0, twins=True).scene != sample(0).scene  # pairs are drawn apart from the plain images


def test_the_broad_world_s_twins_differ_in_one_shape_s_kind_where_it_stands():
    for p in range(20):
        a, b = (sample(2 * p + m, world="broad", image_size=96, twins=True) for m in (0, 1))
        changed = [(x, y) for x, y in zip(a.scene.shapes, b.scene.shapes, strict=True) if x != y]
        assert len(changed) == 1 and replace(changed[0][0], kind=changed[0][1].kind) == changed[0][1]
        assert (a.scene.background, a.scene.pattern) == (b.scene.background, b.scene.pattern)
        ys, xs = np.nonzero((a.image != b.image).any(axis=2))
        assert 0 < np.ptp(ys) < 96 / 2 and np.ptp(xs) < 96 / 2  # one shape's place changed, not the whole image
        # What partial captions are drawn from is the twin's own scene.
        assert broad.scene_of(2 * p + 1, broad.DOMAINS["source"], 0, twins=True) == b.scene


def test_twins_come_in_pairs(tmp_path):
    with pytest.raises(ValueError, match="pairs"):
        write_database(tmp_path, 3, twins=True)


def test_pair_order_keeps_each_pair_side_by_side():
    order = pair_order(np.random.default_rng(0), 20)
    assert sorted(order) == list(range(20))
    assert all(order[i] // 2 == order[i + 1] // 2 and order[i] % 2 == 0 for i in range(0, 20, 2))
    assert list(order) != list(range(20))
    with pytest.raises(ValueError, match="pairs"):
        pair_order(np.random.default_rng(0), 5)


def test_pretraining_on_twins_starts_from_the_given_weights_and_batches_each_pair_together(pretrain_tiny_a, tmp_path, monkeypatch, capsys):
    assert pretrain_tiny_a(tmp_path / "first") == 0
    init = tmp_path / "first" / "tiny-a.safetensors"
    seen = []
    run = Trainer.run

    def watched(self, **kwargs):
        state = self.model.backbone.model.state_dict()
        seen.append((self.order, self.train_records, self.images.records[len(self.train_idx):],
                     all(torch.equal(state[k].half(), v) for k, v in load_file(init).items())))
        return run(self, **kwargs)

    monkeypatch.setattr(Trainer, "run", watched)
    assert pretrain_tiny_a(tmp_path / "twins", "--twins", "--init", str(init)) == 0
    ((order, train, val, started_at_init),) = seen
    assert order is pair_order and started_at_init
    twin_key = lambda r: int(r.key.split("/")[-1].split(".")[0]) // 2  # noqa: E731
    assert [twin_key(r) for r in train[0::2]] == [twin_key(r) for r in train[1::2]]  # pairs stay whole, in order
    assert val and not {twin_key(r) for r in train} & {twin_key(r) for r in val}  # no twin validates its pair
    record = json.loads((tmp_path / "twins" / "tiny-a.record.json").read_text())
    assert record["twins"] and record["init"] == str(init) and record["command"].endswith(f"--twins --init {init}")
    assert (tmp_path / "twins" / "source-twins" / "metadata.jsonl").exists()
    capsys.readouterr()
    # What a user can fix ends in one line naming the problem.
    assert pretrain_tiny_a(tmp_path / "bad", "--twins", "--images", "25") == 2
    assert "must be even" in capsys.readouterr().err
    assert pretrain_tiny_a(tmp_path / "bad", "--twins", "--hard-negatives", "4") == 2
    assert "choose --twins or --hard-negatives" in capsys.readouterr().err
    assert pretrain_tiny_a(tmp_path / "bad", "--init", str(tmp_path / "missing.safetensors")) == 2
    assert "--init " + str(tmp_path / "missing.safetensors") + ": no such weights file" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "source").exists()  # refused before writing a single image
