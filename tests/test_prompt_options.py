"""Prompt dropout and MaPLe-style coupling: what they change, and that they change nothing at inference."""

from __future__ import annotations

import pytest
import torch
from conftest import as_stored

from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.prompts.vocabulary import TokenOffsets
from dbprompt.prompts.tokens import drop_vectors
from dbprompt.training.loss import clip_loss

CAPTIONS = ["a red circle on the left", "a blue star", "a green cross at the top"]


def test_drop_vectors_drops_whole_vectors_and_keeps_the_mean():
    torch.manual_seed(0)
    v = torch.ones(2000, 8)
    dropped = drop_vectors(v, 0.25, training=True)
    rows = dropped[:, 0]
    assert torch.allclose(rows.unique(), torch.tensor([0.0, 4 / 3]))
    assert torch.equal(dropped, rows.unsqueeze(1).expand(-1, 8))  # whole rows, never single numbers
    assert abs(float((rows == 0).float().mean()) - 0.25) < 0.04
    assert abs(float(dropped.mean()) - 1.0) < 0.06
    assert drop_vectors(v, 0.25, training=False) is v


def test_dropout_acts_in_training_only(tiny_backbone):
    torch.manual_seed(0)
    config = PromptConfig(text_len=4, visual_len=4, gate=False, vocab=0, visual_adapter=0)
    plain = PromptedCLIP(tiny_backbone, config)
    dropping = PromptedCLIP(tiny_backbone, config.replace(dropout=0.5))
    dropping.load_state_dict(plain.state_dict())
    images, ids = torch.randn(3, 3, 32, 32), plain.tokenize(CAPTIONS)
    with torch.no_grad():
        plain.eval(), dropping.eval()
        assert torch.equal(dropping.encode_image(images), plain.encode_image(images))
        assert torch.equal(dropping.encode_text(ids), plain.encode_text(ids))
        dropping.train()
        torch.manual_seed(1)
        assert not torch.allclose(dropping.encode_image(images), plain.encode_image(images))


def test_offset_dropout_uses_pretrained_embedding_for_dropped_tokens():
    offsets = TokenOffsets(torch.tensor([5, 7]), width=4, dropout=0.5)
    with torch.no_grad():
        offsets.offsets.fill_(1.0)
    ids, x = torch.tensor([[5, 7, 9]]), torch.zeros(1, 3, 4)
    seen = set()
    torch.manual_seed(0)
    for _ in range(20):
        out = offsets(ids, x)
        assert torch.equal(out[0, 2], torch.zeros(4))  # not listed: never offset
        seen.update(out[0, :2, 0].tolist())
    assert seen == {0.0, 2.0}
    offsets.eval()
    assert torch.equal(offsets(ids, x)[0, :2], torch.ones(2, 4))


def test_coupled_visual_prompts_are_a_map_of_the_textual_ones(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, couple=True, gate=False, vocab=0, visual_adapter=0)).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompts.text.tokens", "prompts.visual.map.weight", "prompts.visual.map.bias"}
    expected = model.prompts.visual.map(model.prompts.text.tokens)
    assert torch.equal(model.prompts.visual.vectors(), expected)
    # The image loss alone reaches the textual tokens through the map.
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fixed_text = model.encode_text(model.tokenize(CAPTIONS))
    clip_loss(model.encode_image(images), fixed_text, tiny_backbone.logit_scale).backward()
    assert model.prompts.text.tokens.grad.abs().sum() > 0
    assert model.prompts.visual.map.weight.grad.abs().sum() > 0


def test_coupled_prompts_round_trip_through_a_prompt_file(tiny_backbone, tmp_path):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, couple=True, vocab=0, visual_adapter=0)).eval()
    with torch.no_grad():
        model.prompts.visual.gate.fill_(0.7)
    images = torch.randn(2, 3, 32, 32)
    loaded = PromptedCLIP.from_prompt_file(model.save_prompt_file(tmp_path / "c.safetensors"))
    as_stored(model)
    assert set(loaded.prompt_state_dict()) == set(model.prompt_state_dict())
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))


def test_coupling_needs_matching_prompts(tiny_backbone):
    with pytest.raises(ValueError, match="one length"):
        PromptConfig(text_len=4, visual_len=2, couple=True, vocab=0, visual_adapter=0)
    with pytest.raises(ValueError, match="one prompt depth"):
        PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, text_depth=1, visual_depth=2, couple=True, vocab=0, visual_adapter=0))
    with pytest.raises(ValueError, match="dropout"):
        PromptConfig(dropout=1.0, vocab=0, visual_adapter=0)
