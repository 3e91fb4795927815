"""Vocabulary offsets: which tokens they cover, where they act, and that they start at zero-shot."""

from __future__ import annotations

import pytest
import torch
from conftest import as_stored

from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.prompts.vocabulary import TokenOffsets, frequent_tokens
from dbprompt.storage import PromptFileError, read_prompt_file
from dbprompt.training.loss import clip_loss

CAPTIONS = ["a crimson disc on the left", "a cobalt wedge at the top", "a crimson wedge in the middle"]


def test_frequent_tokens_count_captions_not_occurrences():
    ids = torch.tensor([[5, 7, 7, 7, 0, 0], [5, 9, 0, 0, 0, 0], [5, 9, 3, 0, 0, 0]])
    # 0 and 5 are in all three captions, 9 in two; 7 occurs three times but in one caption only.
    assert frequent_tokens(ids, 3).tolist() == [0, 5, 9]
    assert frequent_tokens(ids, 10).tolist() == [0, 5, 9, 3, 7]
    with pytest.raises(ValueError):
        frequent_tokens(ids, 0)


def test_offsets_act_only_on_listed_tokens():
    offsets = TokenOffsets(torch.tensor([9, 4]), width=3)
    with torch.no_grad():
        offsets.offsets.copy_(torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]))  # rows follow sorted ids: 4, 9
    ids = torch.tensor([[4, 5, 9, -1]])
    out = offsets(ids, torch.zeros(1, 4, 3))
    assert out[0, :, 0].tolist() == [1.0, 0.0, 2.0, 0.0]
    with pytest.raises(ValueError):
        TokenOffsets(torch.tensor([3, 3]), width=3)


def _vocab_model(backbone, **changes) -> PromptedCLIP:
    config = PromptConfig(text_len=4, visual_len=4, vocab=64, visual_adapter=0).replace(**changes)
    return PromptedCLIP.for_captions(backbone, config, CAPTIONS)


def test_vocabulary_needs_its_token_ids(tiny_backbone):
    with pytest.raises(ValueError, match="for_captions"):
        PromptedCLIP(tiny_backbone, PromptConfig(vocab=8))
    with pytest.raises(ValueError, match="captions"):
        PromptedCLIP.for_captions(tiny_backbone, PromptConfig(vocab=8), [])
    small = PromptedCLIP.for_captions(tiny_backbone, PromptConfig(text_len=0, visual_len=0, vocab=3), CAPTIONS)
    assert small.prompts.vocab.ids.numel() == 3


def test_vocabulary_starts_at_zero_shot_and_learns(tiny_backbone):
    model = _vocab_model(tiny_backbone).train()
    plain = PromptedCLIP(tiny_backbone, PromptConfig.none()).eval()
    ids = model.tokenize(CAPTIONS)
    # The tokens of every training caption are covered.
    assert set(torch.unique(ids).tolist()) <= set(model.prompts.vocab.ids.tolist())
    images = torch.randn(3, 3, 32, 32)
    image_f, text_f = model.encode_image(images), model.encode_text(ids)
    with torch.no_grad():
        assert torch.allclose(text_f, plain.encode_text(ids), atol=1e-6)
    clip_loss(image_f, text_f, tiny_backbone.logit_scale).backward()
    # With a zero gate only the unprompted pass reaches the loss, and it carries the offsets' gradient.
    assert model.prompts.vocab.offsets.grad.abs().sum() > 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompts.text.tokens", "prompts.text.gate", "prompts.visual.tokens", "prompts.visual.gate", "prompts.vocab.offsets"}


def test_unknown_query_words_keep_their_embeddings(tiny_backbone):
    model = _vocab_model(tiny_backbone, text_len=0, visual_len=0).eval()
    with torch.no_grad():
        model.prompts.vocab.offsets.normal_()
    plain = PromptedCLIP(tiny_backbone, PromptConfig.none()).eval()
    ids = model.tokenize(["zebra giraffe", CAPTIONS[0]])
    unseen = set(ids[0].tolist()) - {0} - set(model.prompts.vocab.ids.tolist())
    assert len(unseen) == 2  # the two animal words were never in a training caption
    tokens = tiny_backbone.text_token_embeddings(ids)
    shifted = model.prompts.vocab(ids, tokens)
    for position, token in enumerate(ids[0].tolist()):
        assert torch.equal(shifted[0, position], tokens[0, position]) == (token in unseen)
    with torch.no_grad():
        assert not torch.allclose(model.encode_text(ids)[1], plain.encode_text(ids)[1])


def test_vocabulary_round_trips_through_a_prompt_file(tiny_backbone, tmp_path):
    model = _vocab_model(tiny_backbone).eval()
    with torch.no_grad():
        model.prompts.vocab.offsets.normal_()
        model.prompts.text.gate.fill_(0.5)
    path = model.save_prompt_file(tmp_path / "v.safetensors")
    pf = read_prompt_file(path)
    assert pf.tensors["vocab.ids"].dtype == torch.int64
    assert pf.parameter_count == model.trainable_parameter_count()
    loaded = PromptedCLIP.from_prompt_file(path)
    assert not torch.equal(loaded.prompts.vocab.offsets, model.prompts.vocab.offsets)  # stored as float16
    as_stored(model)
    with torch.no_grad():
        assert torch.equal(loaded.encode_texts(CAPTIONS), model.encode_texts(CAPTIONS))

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    del tensors["vocab.ids"]
    save_file(tensors, str(path), metadata=pf.metadata)
    with pytest.raises(PromptFileError, match="token ids"):
        PromptedCLIP.from_prompt_file(path)
