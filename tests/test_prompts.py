"""Where prompts go, where pooling reads, and where gradients flow."""

from __future__ import annotations

import torch

from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.training.loss import clip_loss

LONG_CAPTION = " ".join(["a large red circle on the left and a small blue star at the top"] * 10)


def _reference_text_features(model: PromptedCLIP, ids: torch.Tensor) -> torch.Tensor:
    """The text path written out by hand from open_clip's parts: prompts after SOT, pool at EOT + n."""
    net = model.backbone.model
    n = model.config.text_len
    x = net.token_embedding(ids)
    prompts = model.prompts.text.tokens[0].unsqueeze(0).expand(ids.shape[0], -1, -1)
    x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)
    x = x + net.positional_embedding
    x = net.transformer(x, attn_mask=net.attn_mask)
    x = net.ln_final(x)
    eot = ids.argmax(dim=-1) + n
    pooled = x[torch.arange(ids.shape[0]), eot]
    return torch.nn.functional.normalize(pooled @ net.text_projection, dim=-1)


def test_long_captions_keep_their_end_token_and_pool_there(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=6, text_depth=1, visual_len=0, gate=False, vocab=0)).eval()
    ids = model.tokenize([LONG_CAPTION, "a red circle"])
    assert ids.shape == (2, tiny_backbone.context_length - 6)
    eot = tiny_backbone.tokenizer.eot_token_id
    assert ids[0, -1] == eot  # truncated, but the end token survives
    assert (ids[1] == eot).nonzero().item() < ids.shape[1] - 1
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), _reference_text_features(model, ids), atol=1e-5)


def test_visual_prompts_sit_after_class_token_without_positions(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=0, visual_len=3, visual_depth=1, vocab=0)).eval()
    seen = {}

    def spy(layer, x):
        seen.setdefault(layer, x.clone())
        return x

    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = tiny_backbone.image_tokens(images)
        inserted = model.prompts.visual.insert(tokens)
        tiny_backbone.image_from_tokens(inserted, 3, spy)
    first = seen[0]
    assert first.shape[1] == tokens.shape[1] + 3
    assert torch.equal(first[:, 1:4], model.prompts.visual.tokens[0].expand(2, -1, -1))
    assert torch.equal(first[:, :1], tokens[:, :1]) and torch.equal(first[:, 4:], tokens[:, 1:])


def test_deep_prompts_replace_prompt_positions_before_each_layer(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=0, visual_len=3, visual_depth=2, vocab=0)).eval()
    hook = model.prompts.visual.layer_hook()
    x = torch.zeros(2, 10, tiny_backbone.vision_width)
    assert torch.equal(hook(0, x), x)
    replaced = hook(1, x)
    assert torch.equal(replaced[:, 1:4], model.prompts.visual.tokens[1].expand(2, -1, -1))
    assert replaced.shape == x.shape and torch.equal(replaced[:, 4:], x[:, 4:])


def test_phrase_init_copies_token_embeddings(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=6, text_init="a photo of a", visual_len=0, vocab=0))
    ids = tiny_backbone.tokenize(["a photo of a"], tiny_backbone.context_length)[0]
    words = ids[1:5]
    expected = tiny_backbone.model.token_embedding.weight[words]
    assert torch.allclose(model.prompts.text.tokens[0, :4], expected)


def test_gradients_reach_only_the_prompts(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, visual_depth=2, gate=False, vocab=0)).train()
    assert not tiny_backbone.training
    ids = model.tokenize(["a red circle", "a blue star", "a green cross"])
    loss = clip_loss(model.encode_image(torch.randn(3, 3, 32, 32)), model.encode_text(ids), tiny_backbone.logit_scale)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompts.text.tokens", "prompts.visual.tokens"}
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert model.prompts.text.tokens.grad.abs().sum() > 0
    assert model.prompts.visual.tokens.grad[1].abs().sum() > 0  # the deep set is used too
    assert model.trainable_parameter_count() == 2 * 4 * 64 + 2 * 4 * 64  # text depth 0 = both layers


def test_gated_prompts_start_exactly_at_zero_shot(tiny_backbone):
    gated = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, gate=True, vocab=0)).train()
    plain = PromptedCLIP(tiny_backbone, PromptConfig.none()).eval()
    ids = gated.tokenize(["a red circle on the left", "a blue star"])
    images = torch.randn(2, 3, 32, 32)
    image_f, text_f = gated.encode_image(images), gated.encode_text(ids)
    with torch.no_grad():
        assert torch.allclose(image_f, plain.encode_image(images), atol=1e-6)
        assert torch.allclose(text_f, plain.encode_text(ids), atol=1e-6)
    clip_loss(image_f, text_f, tiny_backbone.logit_scale).backward()
    assert gated.prompts.text.gate.grad.abs() > 0 and gated.prompts.visual.gate.grad.abs() > 0


def test_gated_text_in_one_batched_pass_equals_two_passes(tiny_backbone):
    """At inference the prompted and unprompted captions share one pass of the tower."""
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=0, gate=True, vocab=0)).eval()
    with torch.no_grad():
        model.prompts.text.gate.fill_(0.6)
        model.prompts.text.tokens.normal_()
    assert tiny_backbone.text_padding_is_inert()
    ids = model.tokenize(["a red circle on the left", "a blue star", LONG_CAPTION])
    calls = []
    original = tiny_backbone.text_from_embeddings

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    tiny_backbone.text_from_embeddings = counting
    try:
        with torch.no_grad():
            batched = model.encode_text(ids)
        assert calls == [6]  # one pass, prompted and unprompted rows together
        with torch.enable_grad():
            separate = model.encode_text(ids).detach()
        assert calls == [6, 3, 3]
    finally:
        del tiny_backbone.text_from_embeddings
    assert torch.allclose(batched, separate, atol=1e-5)
