"""Training lowers the loss, only touches prompts, and resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dbprompt.data import records_for
from dbprompt.embeddings import encode_image_files
from dbprompt.evaluate import evaluate
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.train import LOSS_SCALE, TrainConfig, Trainer, calibrate_logit_scale, clip_loss, epoch_plan


def _trainer(backbone, records, work_dir=None, config=PromptConfig(text_len=4, visual_len=4), **cfg):
    torch.manual_seed(0)
    model = PromptedCLIP(backbone, config)
    options = dict(epochs=3, batch_size=8, lr=1e-2, seed=0, checkpoint_every=2) | cfg
    return Trainer(
        model,
        records_for(records, "train"),
        records_for(records, "val"),
        TrainConfig(**options),
        device="cpu",
        bf16=False,
        work_dir=work_dir,
        progress=False,
        log=lambda _: None,
    )


def test_training_lowers_the_loss_and_leaves_the_backbone_alone(tiny_backbone, tiny_records):
    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    # At the backbone's temperature, so that the loss's fall is the prompts' doing.
    trainer = _trainer(tiny_backbone, tiny_records, epochs=8, calibrate_temperature=False)
    result = trainer.run()
    losses = [h["train_loss"] for h in result.history if h["train_loss"] is not None]
    assert result.finished and len(losses) == 8
    assert losses[-1] < losses[0] - 0.05
    after = tiny_backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    prompts = {"text_prompt.tokens", "visual_prompt.tokens", "text_prompt.gate", "visual_prompt.gate"}
    assert set(result.best_state) == prompts
    assert 0 <= result.best_epoch <= 8


def test_resume_after_a_stop_matches_an_uninterrupted_run(tiny_backbone, tiny_records, tmp_path):
    straight = _trainer(tiny_backbone, tiny_records, tmp_path / "a").run()
    stopped = _trainer(tiny_backbone, tiny_records, tmp_path / "b").run(stop_after_steps=5)
    assert not stopped.finished and (tmp_path / "b" / "checkpoint.safetensors").exists()
    # A fresh process would build a fresh model: different initial prompts must not matter.
    torch.manual_seed(123)
    resumed_trainer = _trainer(tiny_backbone, tiny_records, tmp_path / "b")
    with torch.no_grad():
        for p in resumed_trainer.named.values():
            p.normal_()
    resumed = resumed_trainer.run(resume=True)
    assert resumed.finished and resumed.steps == straight.steps
    for name in straight.best_state:
        assert torch.equal(straight.best_state[name], resumed.best_state[name]), name
    final_a = _trainer(tiny_backbone, tiny_records, tmp_path / "a")
    final_a.load_checkpoint()
    for name, p in resumed_trainer.named.items():
        assert torch.equal(p, final_a.named[name]), name
    assert [h["val_score"] for h in straight.history] == [h["val_score"] for h in resumed.history]


def test_resume_refuses_other_options(tiny_backbone, tiny_records, tmp_path):
    _trainer(tiny_backbone, tiny_records, tmp_path).run(stop_after_steps=1)
    import pytest

    with pytest.raises(ValueError, match="other training options"):
        _trainer(tiny_backbone, tiny_records, tmp_path, lr=0.5).run(resume=True)


def test_textual_only_training_caches_image_features(tiny_backbone, tiny_records):
    text_only = _trainer(tiny_backbone, tiny_records, config=PromptConfig(text_len=4, visual_len=0), epochs=1)
    text_only.run()
    assert text_only.train_image_features is not None
    assert text_only.train_image_features.shape[0] == len(text_only.train_records)
    visual = _trainer(tiny_backbone, tiny_records, epochs=1)
    visual.run()
    assert visual.train_image_features is None


def test_validation_ranks_among_training_images_too(tiny_backbone, tiny_records, monkeypatch):
    import dbprompt.train as train_module

    for config in (PromptConfig(text_len=4, visual_len=0), PromptConfig(text_len=4, visual_len=4)):
        trainer = _trainer(tiny_backbone, tiny_records, config=config, epochs=1)
        n_val, n_train = len(trainer.val_records), len(trainer.train_records)
        monkeypatch.setattr(train_module, "VALIDATION_GALLERY", n_val + 3)
        picks = trainer._distractor_indices()
        assert len(picks) == 3 and len(set(picks)) == 3 and max(picks) >= n_train // 2
        trainer.run()
        alone = evaluate(trainer.model, trainer.val_records, device="cpu", bf16=False)
        distractors = [trainer.train_records[i].path for i in picks]
        crowded = evaluate(trainer.model, trainer.val_records, device="cpu", bf16=False, distractors=distractors)
        assert crowded["clip_benchmark/t2i_mean_rank"] > alone["clip_benchmark/t2i_mean_rank"]
        assert trainer._validate() == pytest.approx(crowded)
        monkeypatch.setattr(train_module, "VALIDATION_GALLERY", 1)
        assert trainer._distractor_indices() == []


def test_epoch_plan_is_a_function_of_seed_and_epoch(tiny_records):
    a = epoch_plan(tiny_records, 0, 1)
    b = epoch_plan(tiny_records, 0, 1)
    c = epoch_plan(tiny_records, 0, 2)
    assert (a[0] == b[0]).all() and a[1] == b[1]
    assert not (a[0] == c[0]).all()
    for i, caption in zip(a[0], a[1]):
        assert caption in tiny_records[i].captions


def test_gated_visual_prompts_reuse_cached_zero_shot_features(tiny_backbone, tiny_records):
    cached = _trainer(tiny_backbone, tiny_records, epochs=2)
    cached.run()
    assert cached.zero_shot_images.shape[0] == len(cached.train_records)
    with torch.no_grad():
        images = cached.images.batch([r.path for r in cached.train_records[:3]])
        assert torch.allclose(cached.zero_shot_images[:3], cached.model.image_zero_shot(images), atol=1e-5)
    # The validation gallery's too: its images, then the training images that fill it up.
    gallery = len(cached.val_records) + len(cached._distractor_indices())
    assert cached.val_zero_shot_images.shape[0] == gallery
    recomputed = _trainer(tiny_backbone, tiny_records, epochs=2, cache_zero_shot=False)
    recomputed.run()
    assert recomputed.zero_shot_images is None and recomputed.val_zero_shot_images is None
    for name, p in cached.named.items():
        assert torch.allclose(p, recomputed.named[name], atol=1e-5), name
    for a, b in zip(cached.state.history, recomputed.state.history, strict=True):
        assert a["val_score"] == pytest.approx(b["val_score"], abs=1e-3)
    # With the gate open, features built on a misaligned cache would differ.
    with torch.no_grad():
        cached.model.visual_prompt.gate.fill_(0.7)
    paths = [r.path for r in cached.val_records]
    known = cached.val_zero_shot_images[: len(paths)]
    with_cache = encode_image_files(cached.model.eval(), paths, device="cpu", bf16=False, zero_shot=known)
    assert torch.allclose(with_cache, encode_image_files(cached.model, paths, device="cpu", bf16=False), atol=1e-5)
    assert not torch.allclose(with_cache, torch.nn.functional.normalize(known.float(), dim=-1), atol=1e-3)
    ungated = _trainer(tiny_backbone, tiny_records, config=PromptConfig(text_len=4, visual_len=4, gate=False), epochs=1)
    ungated.run()
    assert ungated.zero_shot_images is None  # nothing to blend towards


def test_text_anchor_keeps_captions_near_zero_shot(tiny_backbone, tiny_records):
    import pytest

    with pytest.raises(ValueError, match="anchor"):
        TrainConfig(anchor=-1.0)
    vocab = PromptConfig(text_len=0, visual_len=0, vocab=64)
    captions = [c for r in records_for(tiny_records, "train") for c in r.captions]

    def trained(anchor: float) -> PromptedCLIP:
        torch.manual_seed(0)
        model = PromptedCLIP.for_captions(tiny_backbone, vocab, captions)
        cfg = TrainConfig(epochs=3, batch_size=8, lr=5e-2, seed=0, checkpoint_every=0, anchor=anchor)
        Trainer(model, records_for(tiny_records, "train"), [], cfg, device="cpu", bf16=False, progress=False).run()
        return model.eval()

    free, anchored = trained(0.0), trained(50.0)
    ids = free.tokenize(captions[:12])
    with torch.no_grad():
        zero_shot = PromptedCLIP(tiny_backbone, PromptConfig(text_len=0, visual_len=0)).encode_text(ids)
        assert torch.allclose(free.text_zero_shot(ids), zero_shot, atol=1e-6)
        drift = {name: float((1 - (m.encode_text(ids) * zero_shot).sum(-1)).mean()) for name, m in (("free", free), ("anchored", anchored))}
    assert drift["free"] > 0.01  # the offsets did move the captions
    assert drift["anchored"] < drift["free"] / 2


def test_candidates_keep_what_validation_scores_best(tiny_backbone, tiny_records, tmp_path):
    from dbprompt.train import train_candidates

    configs = [TrainConfig(epochs=2, batch_size=8, lr=lr, seed=0, checkpoint_every=0, anchor=a) for lr, a in ((1e-2, 0.0), (3e-2, 4.0))]

    def fresh():
        torch.manual_seed(0)
        return PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4))

    train, val = records_for(tiny_records, "train"), records_for(tiny_records, "val")
    alone = [train_candidates(fresh, train, val, [c], device="cpu", bf16=False, progress=False, log=lambda _: None) for c in configs]
    model, result, chosen = train_candidates(
        fresh, train, val, configs, device="cpu", bf16=False, work_dir=tmp_path, progress=False, log=lambda _: None
    )
    scores = [r.best_score for _, r, _ in alone]
    assert chosen == configs[scores.index(max(scores))] and result.best_score == max(scores)
    assert all((tmp_path / f"candidate-{i}" / "checkpoint.safetensors").exists() for i in range(2))
    # Without a validation split there is nothing to choose with: only the first is trained.
    _, _, only = train_candidates(fresh, train, [], configs, device="cpu", bf16=False, progress=False, log=lambda _: None)
    assert only == configs[0]


def test_trainer_with_hard_negatives_trains_and_resumes(tiny_backbone, tiny_records, tmp_path):
    trainer = _trainer(tiny_backbone, tiny_records, tmp_path, epochs=2, hard_negative_group=4)
    assert trainer.look_alikes is not None
    assert trainer.run().finished


def _forget_option(path, name: str) -> None:
    """Make a checkpoint look as if written before TrainConfig had option `name`."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    older = json.loads(meta["train_config"])
    del older[name]
    save_file(load_file(str(path)), str(path), metadata=meta | {"train_config": json.dumps(older)})


def test_checkpoint_made_before_an_option_existed_still_resumes(tiny_backbone, tiny_records, tmp_path):
    _trainer(tiny_backbone, tiny_records, tmp_path).run(stop_after_steps=1)
    _forget_option(tmp_path / "checkpoint.safetensors", "hard_negative_group")
    assert _trainer(tiny_backbone, tiny_records, tmp_path).run(resume=True).finished


def test_calibration_picks_the_temperature_that_fits_the_pairs():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(128, 16), dim=-1)
    noisy = torch.nn.functional.normalize(images + 0.8 * torch.randn(128, 16), dim=-1)

    def loss(features, scale):
        return sum(float(clip_loss(images[i : i + 32], features[i : i + 32], torch.tensor(scale))) for i in range(0, 128, 32))

    chosen = calibrate_logit_scale(images, noisy, batch_size=32)
    assert 0 < chosen < math.log(45)
    assert loss(noisy, chosen) < min(loss(noisy, math.log(45)), loss(noisy, 0.0))
    assert loss(noisy, chosen) <= min(loss(noisy, chosen + d) for d in (-0.1, 0.1)) + 1e-6
    # Captions that match their images exactly call for a sharper temperature.
    assert calibrate_logit_scale(images, images, batch_size=32) > chosen + 1


def test_trainer_calibrates_its_own_temperature_and_leaves_the_backbone_s(tiny_backbone, tiny_records):
    backbone_scale = float(tiny_backbone.logit_scale)
    trainer = _trainer(tiny_backbone, tiny_records)
    trainer._calibrate_temperature()
    order, captions = epoch_plan(trainer.train_records, 0, 0)
    model = trainer.model.eval()
    with torch.no_grad():
        images = model.encode_image(trainer.images.batch([trainer.train_records[i].path for i in order]))
        texts = model.encode_text(model.tokenize(captions))
    calibrated = float(trainer.loss_scale.detach())
    assert calibrated == pytest.approx(calibrate_logit_scale(images, texts, 8), abs=1e-6)
    assert trainer.named[LOSS_SCALE] is trainer.loss_scale
    result = trainer.run()
    # The temperature then trains with the prompts; the backbone's own is untouched.
    assert result.finished and float(trainer.loss_scale.detach()) != calibrated
    assert float(tiny_backbone.logit_scale) == backbone_scale

    plain = _trainer(tiny_backbone, tiny_records, calibrate_temperature=False)
    assert LOSS_SCALE not in plain.named and plain.loss_scale is tiny_backbone.logit_scale


def test_checkpoint_from_before_calibration_resumes_only_without_it(tiny_backbone, tiny_records, tmp_path):
    _trainer(tiny_backbone, tiny_records, tmp_path, calibrate_temperature=False).run(stop_after_steps=1)
    _forget_option(tmp_path / "checkpoint.safetensors", "calibrate_temperature")
    with pytest.raises(ValueError, match="other training options"):
        _trainer(tiny_backbone, tiny_records, tmp_path).run(resume=True)
    assert _trainer(tiny_backbone, tiny_records, tmp_path, calibrate_temperature=False).run(resume=True).finished
