"""Training lowers the loss, only touches prompts, and resumes exactly; through the Trainer's public interface."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dbprompt.data import records_for
from dbprompt.evaluation import evaluate_models
from dbprompt.model import PromptedCLIP
from dbprompt.pipeline import encode_records, encode_texts
from dbprompt.prompts import PromptConfig
from dbprompt.training.checkpoint import CHECKPOINT, checkpoint_parameters
from dbprompt.training.config import TrainConfig
from dbprompt.training.images import backward_mask, encode_for_step
from dbprompt.training.loss import ContrastiveLoss, calibrate_logit_scale, clip_loss
from dbprompt.training.trainer import Trainer, epoch_plan
from dbprompt.training.validation import distractor_positions

PROMPTS = PromptConfig(text_len=4, visual_len=4, vocab=0, visual_adapter=0)
TEXT_ONLY = PromptConfig(text_len=4, visual_len=0, vocab=0, visual_adapter=0)


def _trainer(backbone, records, work_dir=None, config=PROMPTS, **cfg):
    torch.manual_seed(0)
    model = PromptedCLIP(backbone, config)
    options = dict(epochs=3, batch_size=8, lr=1e-2, seed=0, checkpoint_every=2) | cfg
    return Trainer(
        model, records_for(records, "train"), records_for(records, "val"), TrainConfig(**options),
        work_dir=work_dir, progress=False, log=lambda _: None,
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
    prompts = {"prompts.text.tokens", "prompts.visual.tokens", "prompts.text.gate", "prompts.visual.gate"}
    assert set(result.best_state) == prompts
    assert 0 <= result.best_epoch <= 8


def test_resume_after_a_stop_matches_an_uninterrupted_run(tiny_backbone, tiny_records, tmp_path, one_thread):
    """Also what each step draws at random (the images that backpropagate) is drawn again."""
    config = PROMPTS
    straight_trainer = _trainer(tiny_backbone, tiny_records, tmp_path / "a", config=config, image_backward=0.5)
    straight = straight_trainer.run()
    stopped = _trainer(tiny_backbone, tiny_records, tmp_path / "b", config=config, image_backward=0.5).run(stop_after_steps=5)
    assert not stopped.finished and (tmp_path / "b" / CHECKPOINT).exists()
    # A fresh process would build a fresh model: different initial prompts must not matter.
    torch.manual_seed(123)
    resumed_trainer = _trainer(tiny_backbone, tiny_records, tmp_path / "b", config=config, image_backward=0.5)
    with torch.no_grad():
        for p in resumed_trainer.named.values():
            p.normal_()
    resumed = resumed_trainer.run(resume=True)
    assert resumed.finished and resumed.steps == straight.steps
    for name in straight.best_state:
        assert torch.equal(straight.best_state[name], resumed.best_state[name]), name
    assert [h["val_score"] for h in straight.history] == [h["val_score"] for h in resumed.history]
    # The stop fell inside an epoch: that epoch's mean training loss still counts the steps before it.
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    for name, p in straight_trainer.named.items():  # where each ended, not only the best epoch's
        assert torch.equal(p, resumed_trainer.named[name]), name


def test_resume_refuses_other_options(tiny_backbone, tiny_records, tmp_path):
    _trainer(tiny_backbone, tiny_records, tmp_path).run(stop_after_steps=1)
    with pytest.raises(ValueError, match=r"other training options: lr=0\.01 \(now 0\.5\);"):
        _trainer(tiny_backbone, tiny_records, tmp_path, lr=0.5, image_cache_mb=1).run(resume=True)


def test_checkpoint_parameters_reads_a_runs_parameters_by_name_and_nothing_from_plain_weights(tiny_backbone, tiny_records, tmp_path):
    trainer = _trainer(tiny_backbone, tiny_records, tmp_path)
    trainer.run(stop_after_steps=2)
    found = checkpoint_parameters(tmp_path / CHECKPOINT)
    assert found is not None and set(found) == set(trainer.named)
    for name, p in trainer.named.items():
        assert torch.equal(found[name], p.detach()), name
    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    assert checkpoint_parameters(tmp_path / "plain.safetensors") is None


@pytest.mark.parametrize("image_side", ["trains", "frozen"])
def test_resume_takes_other_run_only_options(tiny_backbone, tiny_records, tmp_path, image_side):
    """How often it checkpoints and how much it caches change nothing it computes: a run resumes with others
    (with nothing in the image tower training, a zero cache also turns its features from kept to recomputed)."""
    config = PROMPTS if image_side == "trains" else TEXT_ONLY
    straight_trainer = _trainer(tiny_backbone, tiny_records, tmp_path / "a", config=config)
    assert straight_trainer.images.frozen == (image_side == "frozen")
    straight = straight_trainer.run()
    _trainer(tiny_backbone, tiny_records, tmp_path / "b", config=config).run(stop_after_steps=1)
    resumed_trainer = _trainer(tiny_backbone, tiny_records, tmp_path / "b", config=config, checkpoint_every=1, image_cache_mb=0)
    assert not resumed_trainer.images.frozen
    resumed = resumed_trainer.run(resume=True)
    assert resumed.finished and resumed.steps == straight.steps
    assert [h["val_score"] for h in straight.history] == pytest.approx([h["val_score"] for h in resumed.history], abs=1e-4)
    for name, p in straight_trainer.named.items():
        assert torch.allclose(p, resumed_trainer.named[name], atol=1e-5), name


def test_frozen_image_side_is_encoded_once_and_cached(tiny_backbone, tiny_records):
    text_only = _trainer(tiny_backbone, tiny_records, config=TEXT_ONLY, epochs=1)
    assert text_only.images.frozen
    text_only.run()
    train = records_for(tiny_records, "train")
    (expected,), _ = encode_records([text_only.model], train, text_only.runtime)
    cached = torch.nn.functional.normalize(text_only.images.states[: len(train)], dim=-1)
    assert torch.allclose(cached, expected, atol=1e-6)
    visual = _trainer(tiny_backbone, tiny_records, epochs=1)
    assert not visual.images.frozen  # a visual prompt changes image features at every step
    visual.run()
    assert visual.images.states is None


def test_text_prompts_train_on_cached_image_features_exactly_as_on_pixels(tiny_backbone, tiny_records):
    """Nothing inside the image tower trains, so it runs once per image; what the prompts learn is the same."""
    cached = _trainer(tiny_backbone, tiny_records, config=TEXT_ONLY, epochs=2)
    pixels = _trainer(tiny_backbone, tiny_records, config=TEXT_ONLY, epochs=2, image_cache_mb=0)
    assert cached.images.frozen and not pixels.images.frozen
    a, b = cached.run(), pixels.run()
    assert a.best_epoch == b.best_epoch and [h["val_score"] for h in a.history] == pytest.approx([h["val_score"] for h in b.history])
    # Where training ended, whichever epoch validation kept (that choice is noise on 40 images).
    assert cached.named["prompts.text.gate"].abs().max() > 0
    for name, p in cached.named.items():
        assert torch.allclose(p, pixels.named[name], atol=1e-5), name
    assert all(p.grad is None for p in tiny_backbone.parameters())


def test_training_on_cached_image_features_resumes_exactly(tiny_backbone, tiny_records, tmp_path):
    straight = _trainer(tiny_backbone, tiny_records, tmp_path / "a", config=TEXT_ONLY).run()
    _trainer(tiny_backbone, tiny_records, tmp_path / "b", config=TEXT_ONLY).run(stop_after_steps=3)
    resumed = _trainer(tiny_backbone, tiny_records, tmp_path / "b", config=TEXT_ONLY).run(resume=True)
    for name in straight.best_state:
        assert torch.equal(straight.best_state[name], resumed.best_state[name]), name


def test_a_step_backpropagates_through_the_tower_for_its_drawn_images_only(tiny_backbone):
    """All images count in the features; autograd reaches the image adapters through `backward` of them."""
    torch.manual_seed(0)
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=0, visual_len=0, vocab=0, visual_adapter=4)).train()
    with torch.no_grad():
        model.prompts.visual_adapters.up.normal_()  # adapters that act, so that gradients reach them
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        plain = model.encode_image(images)
    backprop = backward_mask(6, 0.5, torch.Generator().manual_seed(0))
    assert int(backprop.sum()) == 3
    features = encode_for_step(model, images, backprop)
    assert torch.allclose(features, plain, atol=1e-6)  # in the batch's order
    reached = []
    for row in features:
        (grad,) = torch.autograd.grad(row.sum(), model.prompts.visual_adapters.down, retain_graph=True, allow_unused=True)
        reached.append(grad is not None and bool(grad.abs().sum() > 0))
    assert reached == backprop.tolist()
    assert encode_for_step(model, images, None).requires_grad
    # A rank whose share drew none: no graph through the tower, but its features still take part in backward
    # (the loss's gather over ranks runs a collective there, which every rank must join).
    none = encode_for_step(model, images, torch.zeros(6, dtype=torch.bool))
    assert none.requires_grad and none.grad_fn is None
    with torch.no_grad():
        assert torch.equal(encode_for_step(model, images, backprop), plain)
    with pytest.raises(ValueError, match="image_backward"):
        TrainConfig(image_backward=0.0)


def test_validation_ranks_among_training_images_too(tiny_backbone, tiny_records):
    assert distractor_positions(100, 10, gallery=13) == [0, 33, 66]
    assert distractor_positions(5, 10, gallery=100) == [0, 1, 2, 3, 4]
    assert distractor_positions(100, 10, gallery=1) == []
    for config in (TEXT_ONLY, PROMPTS):
        trainer = _trainer(tiny_backbone, tiny_records, config=config, epochs=1)
        result = trainer.run()
        val, train = records_for(tiny_records, "val"), records_for(tiny_records, "train")
        trainer.restore_best()
        alone = evaluate_models({"m": trainer.model}, val)["m"]
        crowded = evaluate_models({"m": trainer.model}, val, distractors=train)["m"]  # the tiny database: all fit
        assert crowded["clip_benchmark/t2i_mean_rank"] > alone["clip_benchmark/t2i_mean_rank"]
        best = next(h for h in result.history if h["epoch"] == result.best_epoch)
        assert best["clip_benchmark/t2i_R@1"] == pytest.approx(crowded["clip_benchmark/t2i_R@1"])


def test_epoch_plan_is_a_function_of_seed_and_epoch(tiny_records):
    a = epoch_plan(tiny_records, 0, 1)
    b = epoch_plan(tiny_records, 0, 1)
    c = epoch_plan(tiny_records, 0, 2)
    assert (a[0] == b[0]).all() and a[1] == b[1]
    assert not (a[0] == c[0]).all()
    for i, caption in zip(a[0], a[1]):
        assert caption in tiny_records[i].captions


def test_phases_are_entered_around_each_part_of_a_run(tiny_backbone, tiny_records):
    """The public hook the lab times a run's parts with: forward passes, validation, calibration."""
    import contextlib

    entered: list[str] = []

    @contextlib.contextmanager
    def phase(name: str):
        entered.append(name)
        yield

    trainer = _trainer(tiny_backbone, tiny_records, epochs=2)
    trainer.phase = phase
    result = trainer.run()
    assert entered.count("calibration") == 1 and entered.index("calibration") == 0
    assert entered.count("validation") == 3  # epoch 0 (before training), 1 and 2
    assert entered.count("forward") == result.steps  # one micro-batch per step here



def test_a_custom_epoch_order_is_used_and_resumes(tiny_backbone, tiny_records, tmp_path):
    seen = []

    def reversed_order(rng, n):
        seen.append(n)
        return rng.permutation(n)[::-1].copy()

    trainer = _trainer(tiny_backbone, tiny_records, tmp_path, epochs=2)
    trainer.order = reversed_order
    assert trainer.run().finished and seen  # calibration's plan and each epoch's


def _rewrite_options(path, change) -> None:
    """Make a checkpoint look as if written by another version's TrainConfig."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    options = json.loads(meta["train_config"])
    change(options)
    save_file(load_file(str(path)), str(path), metadata=meta | {"train_config": json.dumps(options)})


def test_checkpoints_from_older_versions_resume_when_they_mean_the_same(tiny_backbone, tiny_records, tmp_path):
    _trainer(tiny_backbone, tiny_records, tmp_path).run(stop_after_steps=1)
    # Written when these options existed, at the values every run used: still resumes.
    _rewrite_options(tmp_path / CHECKPOINT, lambda o: o.update(cache_zero_shot=True, hard_negative_group=0))
    assert _trainer(tiny_backbone, tiny_records, tmp_path).run(resume=True).finished
    _trainer(tiny_backbone, tiny_records, tmp_path / "b").run(stop_after_steps=1)
    _rewrite_options(tmp_path / "b" / CHECKPOINT, lambda o: o.update(hard_negative_group=8))
    with pytest.raises(ValueError, match="hard_negative_group=8, which is gone"):
        _trainer(tiny_backbone, tiny_records, tmp_path / "b").run(resume=True)


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


def test_the_loss_is_open_clip_s_symmetric_infonce():
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    images, texts = torch.randn(8, 16), torch.randn(8, 16)
    loss = ContrastiveLoss(torch.tensor(math.log(20.0)))
    with torch.no_grad():
        ours = float(loss(images, texts))
    assert ours == pytest.approx(float(ClipLoss()(images, texts, torch.tensor(20.0))), abs=1e-6)
    labels = torch.arange(8)
    logits = 20.0 * images @ texts.t()
    by_hand = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    assert ours == pytest.approx(float(by_hand), abs=1e-5)


def test_trainer_calibrates_its_own_temperature_and_leaves_the_backbone_s(tiny_backbone, tiny_records):
    backbone_scale = float(tiny_backbone.logit_scale)
    trainer = _trainer(tiny_backbone, tiny_records, epochs=1)
    at_start = []
    trainer.on_epoch = lambda entry: at_start.append(float(trainer.loss.scale.detach())) if entry["epoch"] == 0 else None
    trainer.run()
    # Epoch 0's temperature is the best fit of the untrained model on epoch 0's first pairs.
    order, captions = epoch_plan(trainer.train_records, 0, 0)
    model = PromptedCLIP(tiny_backbone, PROMPTS).eval()  # untrained gated prompts rank as zero-shot
    (images,), _ = encode_records([model], [trainer.train_records[i] for i in order], trainer.runtime)
    texts = encode_texts(model, captions, trainer.runtime)
    assert at_start[0] == pytest.approx(calibrate_logit_scale(images, texts, 8), abs=1e-6)
    # The temperature then trains with the prompts; the backbone's own is untouched.
    assert float(trainer.loss.scale.detach()) != at_start[0]
    assert "loss.logit_scale" in trainer.named
    assert float(tiny_backbone.logit_scale) == backbone_scale
    plain = _trainer(tiny_backbone, tiny_records, calibrate_temperature=False)
    assert "loss.logit_scale" not in plain.named and plain.loss.scale is tiny_backbone.logit_scale


def test_checkpoint_from_before_calibration_resumes_only_without_it(tiny_backbone, tiny_records, tmp_path):
    _trainer(tiny_backbone, tiny_records, tmp_path, calibrate_temperature=False).run(stop_after_steps=1)
    _rewrite_options(tmp_path / CHECKPOINT, lambda o: o.pop("calibrate_temperature"))
    with pytest.raises(ValueError, match="other training options"):
        _trainer(tiny_backbone, tiny_records, tmp_path).run(resume=True)
    assert _trainer(tiny_backbone, tiny_records, tmp_path, calibrate_temperature=False).run(resume=True).finished


def test_bad_training_images_stop_the_run_or_are_skipped(tiny_backbone, tiny_records, tmp_path):
    import dataclasses

    from dbprompt.data import BadInputReport, DataError

    train = records_for(tiny_records, "train")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = train[:-1] + [dataclasses.replace(train[-1], path=broken, limits=None)]  # outside the database: no root
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=0)
    with pytest.raises(DataError, match="broken.png"):
        Trainer(PromptedCLIP(tiny_backbone, PROMPTS), bad, [], cfg, progress=False).run()
    report = BadInputReport()
    trainer = Trainer(PromptedCLIP(tiny_backbone, PROMPTS), bad, [], cfg, progress=False, skip_bad=True, report=report)
    assert trainer.run().finished and len(trainer.train_records) == len(train) - 1
    assert report.counts == {"not an image": 1}


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_backbone, tiny_records, tmp_path):
    from dbprompt.training.trainer import NonFiniteError

    cfg = TrainConfig(epochs=2, batch_size=8, checkpoint_every=1, calibrate_temperature=False)
    train = records_for(tiny_records, "train")
    Trainer(PromptedCLIP(tiny_backbone, PROMPTS), train, [], cfg, work_dir=tmp_path, progress=False).run(stop_after_steps=2)
    good = (tmp_path / CHECKPOINT).read_bytes()
    diverged = Trainer(PromptedCLIP(tiny_backbone, PROMPTS), train, [], cfg, work_dir=tmp_path, progress=False)
    with torch.no_grad():  # as a diverging step would leave them
        diverged.model.prompts.visual.tokens.fill_(float("nan"))
        diverged.model.prompts.visual.gate.fill_(1.0)
    with pytest.raises(NonFiniteError, match="training loss became non-finite.*last good checkpoint"):
        diverged.run()
    assert (tmp_path / CHECKPOINT).read_bytes() == good


def test_validation_that_cannot_be_read_at_all_is_refused(tiny_backbone, tiny_records, tmp_path):
    import dataclasses

    from dbprompt.data import BadInputReport

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    val = [dataclasses.replace(r, path=broken) for r in records_for(tiny_records, "val")]
    cfg = TrainConfig(epochs=1, batch_size=8, checkpoint_every=0)
    trainer = Trainer(PromptedCLIP(tiny_backbone, PROMPTS), records_for(tiny_records, "train"), val, cfg,
                      progress=False, skip_bad=True, report=BadInputReport())
    with pytest.raises(ValueError, match="no validation image could be read"):
        trainer.run()


def test_without_epochs_a_small_database_trains_for_min_steps_and_explicit_epochs_are_kept(tiny_backbone, tiny_records, monkeypatch):
    from dbprompt.training import config

    assert TrainConfig().epochs_for(32) == config.DEFAULT_EPOCHS  # a database of 2,000 images at batch 64: as it was
    assert TrainConfig().epochs_for(1) == config.MIN_STEPS and TrainConfig().epochs_for(3) == math.ceil(config.MIN_STEPS / 3)
    assert TrainConfig(epochs=2).epochs_for(1) == 2
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)
    monkeypatch.setattr(config, "MIN_STEPS", 60)
    trainer = _trainer(tiny_backbone, tiny_records, epochs=None, checkpoint_every=0)
    steps = trainer.steps_per_epoch
    assert steps * config.DEFAULT_EPOCHS < 60  # the tiny database makes few steps an epoch
    result = trainer.run()
    assert trainer.epochs == math.ceil(60 / steps) > config.DEFAULT_EPOCHS and result.steps == steps * trainer.epochs
    assert [h["epoch"] for h in result.history] == list(range(trainer.epochs + 1))


def test_validation_too_small_to_choose_keeps_the_last_epoch(tiny_backbone, tiny_records, monkeypatch):
    from dbprompt.training import trainer as trainer_module

    small = _trainer(tiny_backbone, tiny_records, epochs=3, checkpoint_every=0)
    assert 0 < len(small.val_idx) < trainer_module.MIN_CHOOSING
    result = small.run()
    assert result.best_epoch == 3 and all(h["selected_by"] == trainer_module.LAST_EPOCH for h in result.history)
    # The same run where its validation may choose: the epoch with the best score, whichever it is.
    monkeypatch.setattr(trainer_module, "MIN_CHOOSING", 1)
    chosen = _trainer(tiny_backbone, tiny_records, epochs=3, checkpoint_every=0, lr=1e-12).run()
    assert all(h["selected_by"] != trainer_module.LAST_EPOCH for h in chosen.history)
    assert chosen.best_epoch == max(chosen.history, key=lambda h: h["val_score"])["epoch"]
