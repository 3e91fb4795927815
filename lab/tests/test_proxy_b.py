"""The second proxy: its config builds within the size limit, loads by name through the lab's entry point, and
pre-trains with the sigmoid loss, resumably (on a tiny stand-in architecture, for speed)."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
import shlex
import tomllib
from dataclasses import replace
from pathlib import Path

import open_clip
import open_clip.factory
import pytest
import torch
from safetensors.torch import load_file

from dbprompt.backbones import load_backbone, model_dirs
from dbprompt.training.loss import ContrastiveLoss
from dbprompt.training.trainer import Trainer
from dbprompt_lab import cli, models, proxy
from dbprompt_lab.sigmoid_loss import SigmoidLoss
from dbprompt_lab.swap_negatives import SwapNegativeLoss

B = "dbprompt-proxy-b"
LAB = Path(__file__).resolve().parents[1]


def test_proxy_b_builds_within_its_size_and_encodes(one_thread):
    backbone = load_backbone(B, "random")
    params = sum(p.numel() for p in backbone.model.parameters())
    assert params == 28_525_570 and params * 2 <= 60e6  # fp16 weights under 60 MB
    assert backbone.image_size == (96, 96) and backbone.context_length == 64
    assert float(backbone.model.logit_bias) == -10 and float(backbone.model.logit_scale.exp()) == pytest.approx(10)
    with torch.no_grad():
        images = backbone.encode_image(torch.randn(2, 3, 96, 96))
        texts = backbone.encode_text(backbone.tokenize(["a red star on the left", "a blue circle"], 64))
    assert images.shape == texts.shape == (2, 256)


@pytest.fixture
def entry_points_only(monkeypatch):
    """dbprompt's model directories as a fresh process would read them, from these entry points alone."""
    monkeypatch.setattr(model_dirs, "_read", False)
    monkeypatch.setattr(model_dirs, "_dirs", [])
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [model_dirs.OWN])
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIGS", {})
    open_clip.factory._rescan_model_configs()

    def use(*entries):
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [e for e in entries if e.group == group])

    return use


def test_the_lab_s_entry_point_makes_proxy_b_loadable_by_name(entry_points_only):
    declared = tomllib.loads((LAB / "pyproject.toml").read_text())["project"]["entry-points"][model_dirs.GROUP]
    entry_points_only(*(importlib.metadata.EntryPoint(k, v, model_dirs.GROUP) for k, v in declared.items()))
    assert B not in open_clip.list_models()
    assert load_backbone(B, "random").image_size == (96, 96)
    assert model_dirs.model_dirs() == (model_dirs.OWN, models.DIR)


def test_without_the_entry_point_proxy_b_is_unknown(entry_points_only):
    entry_points_only()
    with pytest.raises(ValueError, match="unknown model"):
        load_backbone(B, "random")


def test_the_sigmoid_loss_prefers_matching_pairs_and_counts_repeated_captions_as_positives():
    clip = load_backbone("dbprompt-tiny", "random").model
    clip.logit_bias = torch.nn.Parameter(torch.tensor(-2.0))
    loss = SigmoidLoss(clip)
    features = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert loss(features, features) < loss(features, features.roll(1, 0))
    keys = (torch.tensor([[0], [0], [1], [2]]), torch.tensor([0, 0, 1, 2]))  # images 0 and 1 share a caption
    assert loss(features, features[[0, 0, 2, 3]], keys) < loss(features, features[[0, 0, 2, 3]])
    with pytest.raises(ValueError, match="logit_bias"):
        SigmoidLoss(load_backbone("dbprompt-tiny", "random").model)


@pytest.fixture
def tiny_b(tmp_path, monkeypatch):
    """A stand-in for proxy-b: its world, loss and recipe's shape on the tiny architecture, 1 epoch of 30 images."""
    home = tmp_path / "models"
    home.mkdir()
    tiny = json.loads((model_dirs.OWN / "dbprompt-tiny.json").read_text())
    (home / "tiny-b.json").write_text(json.dumps(tiny | {"init_logit_scale": 2.3, "init_logit_bias": -10}))
    monkeypatch.setattr(model_dirs, "_dirs", list(model_dirs.model_dirs()[1:]))
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIG_PATHS", list(open_clip.factory._MODEL_CONFIG_PATHS))
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIGS", dict(open_clip.factory._MODEL_CONFIGS))
    model_dirs.add_model_dir(home)
    spec = replace(proxy.PROXIES[B], name="tiny-b", image_size=32, images=30, home=home,
                   recipe=replace(proxy.PROXIES[B].recipe, epochs=2, batch_size=8, checkpoint_every=1))
    monkeypatch.setitem(proxy.PROXIES, "tiny-b", spec)
    monkeypatch.setattr(proxy, "TEST_IMAGES", 12)
    monkeypatch.setattr(proxy, "LINEAR_IMAGES", 48)
    return spec


def _pretrain(work: Path, *extra: str) -> int:
    return cli.main(["proxy", "pretrain", "--model", "tiny-b", "--work-dir", str(work), "--device", "cpu", *extra])


def test_proxy_b_pretrains_on_the_broad_world_with_the_sigmoid_loss_and_resumes(tiny_b, tmp_path, monkeypatch, capsys, one_thread):
    losses = []
    run = Trainer.run

    def watched(self, **kwargs):
        losses.append(type(self.loss))
        return run(self, **kwargs)

    monkeypatch.setattr(Trainer, "run", watched)
    assert _pretrain(tmp_path / "whole") == 0
    whole = json.loads((tmp_path / "whole" / "tiny-b.record.json").read_text())
    assert losses == [SigmoidLoss] and whole["world"] == "broad" and whole["loss"] == "sigmoid"
    assert "proxy_world_test_metrics" in whole and len(whole["history"]) == 3
    assert list(whole["attribute_probe"]) == ["shape", "colour", "size"]  # what class folders will need of it
    assert list(whole["linear_probe"]) == ["shape", "colour", "size", "style"]
    out = capsys.readouterr().out
    assert "true caption over a one-word swap (0.5: blind): shape " in out
    assert "linear classifier on image features, held-out accuracy (chance): shape " in out
    assert (tmp_path / "whole" / "broad-source" / "metadata.jsonl").exists()
    # Cut off after one step, then resumed: the same weights as the run that was never interrupted.
    monkeypatch.setattr(Trainer, "run", functools.partialmethod(watched, stop_after_steps=1))
    assert _pretrain(tmp_path / "cut") == 0
    monkeypatch.setattr(Trainer, "run", watched)
    capsys.readouterr()
    assert _pretrain(tmp_path / "cut", "--resume") == 0
    assert "resumed at epoch 1, step 1" in capsys.readouterr().out
    a, b = load_file(tmp_path / "whole" / "tiny-b.safetensors"), load_file(tmp_path / "cut" / "tiny-b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_recipe_trial_swaps_the_loss_adds_swap_negatives_and_logs_the_text_cosine(tiny_b, tmp_path, monkeypatch, capsys, one_thread):
    seen = []
    run = Trainer.run

    def watched(self, **kwargs):
        seen.append((type(self.loss), type(getattr(self.loss, "loss", None)), float(self.model.backbone.logit_scale.detach())))
        return run(self, **kwargs)

    monkeypatch.setattr(Trainer, "run", watched)
    monkeypatch.setattr(proxy, "VAL_FRACTION", 0.3)  # captions to log the text cosine on, among so few images
    assert _pretrain(tmp_path, "--loss", "contrastive", "--swap-negatives", "shape=0.7,size=0.3", "--images", "24") == 0
    assert seen[0] == (SwapNegativeLoss, ContrastiveLoss, pytest.approx(proxy.CONTRASTIVE_SCALE))
    record = json.loads((tmp_path / "tiny-b.record.json").read_text())
    assert record["loss"] == "contrastive" and record["swap_negatives"] == {"shape": 0.7, "size": 0.3}
    assert record["command"].endswith("--loss contrastive --swap-negatives shape=0.7,size=0.3")
    out = capsys.readouterr().out
    cosines = re.findall(r"text cosine of a one-word swap \(1.000: word ignored\): shape (\S+),", out)
    assert len(cosines) == 3 and all(0 < float(c) <= 1 for c in cosines)  # epochs 0, 1, 2
    # Fewer images than the database holds: its first ones (a trial reads a full run's database).
    assert _pretrain(tmp_path, "--images", "12") == 0
    fewer = json.loads((tmp_path / "tiny-b.record.json").read_text())
    assert fewer["train_images"] < 12 <= record["train_images"] and fewer["loss"] == "sigmoid"
    assert cli.main(["proxy", "pretrain", "--model", "tiny-b", "--work-dir", str(tmp_path), "--swap-negatives", "shape"]) == 2
    assert "ATTRIBUTE=SHARE" in capsys.readouterr().err


def test_check_says_when_proxy_b_has_no_weights_yet(tmp_path, capsys):
    if proxy.PROXIES[B].weights.exists():
        pytest.skip("proxy-b's weights ship now")
    assert cli.main(["proxy", "check", "--model", B, "--work-dir", str(tmp_path)]) == 2
    assert "has no shipped weights yet" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_the_gpu_script_s_command_is_one_the_cli_takes():
    script = (LAB / "scripts" / "pretrain_proxy_b_gpu.sh").read_text()
    command = script[script.index("python3 -m dbprompt_lab proxy pretrain") : script.index("2>&1 | tee")]
    command = re.sub(r'"\$\(\(.*?\)\)"', "12", command.replace("\\\n", " ")).replace('"$WORK"', "runs/proxy-b").replace('"$@"', "--twins")
    args = cli.build_parser().parse_args(shlex.split(command)[3:])
    assert (args.model, args.world, args.device, args.bf16, args.resume, args.progress) == (B, "broad", "cuda", True, True, False)
    assert args.twins  # the script's own options go on to the command


def test_partial_captions_are_true_of_their_image_and_positives_for_every_image_they_are_true_of(tmp_path, one_thread):
    from dbprompt.data import load_database
    from dbprompt.training.loss import relevance
    from dbprompt_lab.world import broad, write_database
    from dbprompt_lab.world.broad.captions import partial_captions

    db = write_database(tmp_path / "db", 60, domain="source", seed=proxy.SOURCE_SEED, image_size=32, world="broad", workers=1)
    records = load_database(db).records
    train, val = records[:56], records[56:]
    extended, keys = proxy._with_partial_captions(train, val, False)
    assert proxy.PROXIES[B].partial_captions and keys.labels
    scenes = [broad.draw(int(Path(r.path).stem), broad.DOMAINS["source"], proxy.SOURCE_SEED, 32, 3)[0] for r in train]
    assert scenes == [broad.scene_of(int(Path(r.path).stem), broad.DOMAINS["source"], proxy.SOURCE_SEED) for r in train]
    given = [e for r, e in zip(train, extended) if e.captions != r.captions]
    assert 0.2 < len(given) / len(train) < 0.6  # PARTIAL_SHARE of them, 0.4
    for r, e, scene in zip(train, extended, scenes):
        assert e.captions[:3] == r.captions and set(e.captions[3:]) <= set(partial_captions(scene)) and len(e.captions) <= 4
    assert all(len(t.split()) == 3 for scene in scenes for t in partial_captions(scene))  # "a red star": colour and shape
    # The first image's "a red star" (say) is a positive of every image with a shape of that colour and kind, and only of them.
    shape = scenes[0].shapes[0]
    text = partial_captions(scenes[0])[0]
    positive = relevance(keys.batch(list(range(56)), [text] * 56))[:, 0]
    assert positive.tolist() == [any((s.kind, s.colour) == (shape.kind, shape.colour) for s in scene.shapes) for scene in scenes]
    # Full captions stay each image's own.
    own = relevance(keys.batch(list(range(56)), [r.captions[0] for r in train]))
    assert torch.equal(own, torch.eye(56, dtype=torch.bool))
