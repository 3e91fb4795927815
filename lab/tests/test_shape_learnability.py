"""The shape-learnability check trains an image tower on shape labels: its data, its towers, its loop."""

from __future__ import annotations

import sys

import pytest
import torch

from dbprompt.backbones import RANDOM, load_backbone
from dbprompt_lab.benchmarks.shape_learnability import image_tower, learn, main, shape_data
from dbprompt_lab.probe import single_shape_images
from dbprompt_lab.world.broad import scene as broad_scene


def test_shape_data_keeps_the_asked_style_and_labels_each_image_with_its_shape():
    _, transform = image_tower("dbprompt-proxy-b", None, None)
    x, y, kinds = shape_data("broad", 44, 96, "filled", transform)
    _, labels = single_shape_images("broad", 44, 96, seed=5)
    filled = [s for s, style in zip(labels["shape"], labels["style"]) if style == "filled"]
    assert kinds == list(broad_scene.SHAPES) and x.shape == (len(filled), 3, 96, 96)
    assert [kinds[i] for i in y.tolist()] == filled
    assert len(shape_data("broad", 44, 96, "all", transform)[1]) == 44
    with pytest.raises(ValueError, match="no outlined shapes"):
        shape_data("proxy", 8, 64, "outlined", transform)  # the proxy world's shapes are all filled


def test_image_tower_takes_another_patch_size_only_for_random_weights():
    assert image_tower("dbprompt-proxy-b", None, None)[0].conv1.kernel_size == (16, 16)
    assert image_tower("dbprompt-proxy-b", 8, None)[0].conv1.kernel_size == (8, 8)
    with pytest.raises(ValueError, match="--patch"):
        image_tower("dbprompt-proxy", 8, "random")


def test_learn_fits_the_training_images_and_reports_held_out_accuracy():
    torch.manual_seed(0)
    # Two classes told apart by brightness: a tower must fit them within a few steps.
    x = torch.cat([torch.full((24, 3, 64, 64), -1.0), torch.full((24, 3, 64, 64), 1.0)]) + 0.1 * torch.randn(48, 3, 64, 64)
    y = torch.tensor([0] * 24 + [1] * 24)
    order = torch.randperm(48)
    reports = list(learn(image_tower("dbprompt-proxy", None, None)[0], x[order], y[order], 2, steps=40, lr=1e-3, batch_size=16, every=20))
    assert [step for step, _, _ in reports] == [20, 40]
    assert reports[-1][2] >= 0.85


def test_save_writes_the_backbone_with_the_trained_image_tower_and_the_text_tower_as_loaded(tmp_path, monkeypatch, capsys, one_thread):
    out = tmp_path / "shapes.safetensors"
    argv = ["shape_learnability", "--model", "dbprompt-proxy", "--steps", "2", "--images", "24", "--batch-size", "4", "--save", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    assert f"wrote {out}" in capsys.readouterr().out
    start, saved = load_backbone("dbprompt-proxy", RANDOM), load_backbone("dbprompt-proxy", str(out))
    before, after = start.model.state_dict(), saved.model.state_dict()
    visual = [k for k in before if k.startswith("visual.")]
    assert visual and any(not torch.equal(before[k].half(), after[k]) for k in visual)
    assert all(torch.equal(before[k].half().float(), after[k].float()) for k in before if not k.startswith("visual."))
    monkeypatch.setattr(sys, "argv", [*argv, "--patch", "8"])
    with pytest.raises(SystemExit):
        main()
    assert "cannot take --patch" in capsys.readouterr().err
