"""Swapped-word negatives: which caption becomes the negative, and the loss each pre-training loss becomes
(NegCLIP's extra softmax column for the contrastive loss, one more negative pair for the sigmoid one)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dbprompt.backbones import load_backbone
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.training.loss import ContrastiveLoss
from dbprompt_lab.probe import VOCABULARY
from dbprompt_lab.sigmoid_loss import SigmoidLoss
from dbprompt_lab.swap_negatives import SwapBatch, SwapKeys, SwapNegativeLoss, format_share, parse_share

WORDS = VOCABULARY["broad"]


class Inner:
    def batch(self, images, captions):
        return ("inner", tuple(images))


def test_a_swap_changes_only_the_drawn_attribute_s_word_and_is_drawn_again_alike():
    keys = SwapKeys(Inner(), WORDS, {"shape": 1.0})
    caption = "a small red star at the top left and a large blue circle"
    swapped = keys.swap(caption)
    before, after = caption.split(), swapped.split()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed and changed[0][0] == "star" and changed[0][1] in WORDS["shape"] and len(changed) == 1
    assert keys.swap(caption) == swapped and SwapKeys(Inner(), WORDS, {"shape": 1.0}).swap(caption) == swapped
    # No shape word (a synonym): the other attribute's word is swapped; no word at all: no negative.
    both = SwapKeys(Inner(), WORDS, {"shape": 1.0, "size": 0.0})
    assert both.swap("a small red six-sided shape").split()[1] in set(WORDS["size"]) - {"small"}
    assert both.swap("something else entirely") is None
    batch = both.batch([3, 4], [caption, "nothing here"])
    assert batch.keys == ("inner", (3, 4)) and batch.swapped[1] is None and batch.swapped[0] is not None


def test_an_attribute_without_words_and_a_malformed_share_are_refused():
    with pytest.raises(ValueError, match="no words for texture"):
        SwapKeys(Inner(), WORDS, {"texture": 1.0})
    assert parse_share("shape=0.7, size=0.3") == {"shape": 0.7, "size": 0.3}
    assert format_share({"shape": 0.7, "size": 0.3}) == "shape=0.7,size=0.3"
    for bad in ("shape", "shape=x", "shape=0", ""):
        with pytest.raises(ValueError, match="--swap-negatives"):
            parse_share(bad)


@pytest.fixture
def model(one_thread):
    torch.manual_seed(0)
    return PromptedCLIP(load_backbone("dbprompt-tiny", "random"), PromptConfig.none()).eval()


def _features(model, captions):
    with torch.no_grad():
        return model.encode_text(model.tokenize(captions))


def test_the_contrastive_loss_gains_the_swap_as_one_more_column_of_its_image_s_softmax(model):
    captions = ["a small red star", "a large blue circle", "a medium green square"]
    swapped = ["a small red circle", None, "a medium green heart"]
    torch.manual_seed(1)
    images = F.normalize(torch.randn(3, model.backbone.embed_dim), dim=-1)
    texts = _features(model, captions)
    inner = ContrastiveLoss(model.backbone.logit_scale, own=False)
    loss = SwapNegativeLoss(inner, model)
    with torch.no_grad():
        got = loss(images, texts, SwapBatch(None, swapped))
        plain = loss(images, texts, None)
        scale = model.backbone.logit_scale.exp()
        extra = torch.full((3,), -torch.inf)
        extra[[0, 2]] = scale * (images[[0, 2]] * _features(model, [swapped[0], swapped[2]])).sum(-1)
        target = torch.arange(3)
        rows = torch.cat([scale * images @ texts.T, extra[:, None]], dim=1)
        negclip = (F.cross_entropy(rows, target) + F.cross_entropy(scale * texts @ images.T, target)) / 2
    assert torch.allclose(got, negclip, atol=1e-5)
    assert torch.equal(plain, inner(images, texts)) and got > plain


def test_the_sigmoid_loss_gains_one_negative_pair_per_swapped_caption(model):
    clip = model.backbone.model
    clip.logit_bias = torch.nn.Parameter(torch.tensor(-2.0))
    captions = ["a small red star", "a large blue circle"]
    swapped = ["a small red heart", "a small blue circle"]
    torch.manual_seed(2)
    images = F.normalize(torch.randn(2, model.backbone.embed_dim), dim=-1)
    texts = _features(model, captions)
    inner = SigmoidLoss(clip)
    with torch.no_grad():
        got = SwapNegativeLoss(inner, model)(images, texts, SwapBatch(None, swapped))
        logits = clip.logit_scale.exp() * (images * _features(model, swapped)).sum(-1) + clip.logit_bias
        expected = inner(images, texts) + (-F.logsigmoid(-logits)).sum() / 2
    assert torch.allclose(got, expected, atol=1e-5)
