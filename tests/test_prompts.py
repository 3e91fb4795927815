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
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=6, text_depth=1, visual_len=0, gate=False, vocab=0, visual_adapter=0)).eval()
    ids = model.tokenize([LONG_CAPTION, "a red circle"])
    assert ids.shape == (2, tiny_backbone.context_length - 6)
    eot = tiny_backbone.tokenizer.eot_token_id
    assert ids[0, -1] == eot  # truncated, but the end token survives
    assert (ids[1] == eot).nonzero().item() < ids.shape[1] - 1
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), _reference_text_features(model, ids), atol=1e-5)


def test_visual_prompts_sit_after_class_token_without_positions(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=0, visual_len=3, visual_depth=1, vocab=0, visual_adapter=0)).eval()
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
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=0, visual_len=3, visual_depth=2, vocab=0, visual_adapter=0)).eval()
    hook = model.prompts.visual.layer_hook()
    x = torch.zeros(2, 10, tiny_backbone.vision_width)
    assert torch.equal(hook(0, x), x)
    replaced = hook(1, x)
    assert torch.equal(replaced[:, 1:4], model.prompts.visual.tokens[1].expand(2, -1, -1))
    assert replaced.shape == x.shape and torch.equal(replaced[:, 4:], x[:, 4:])


def test_phrase_init_copies_token_embeddings(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=6, text_init="a photo of a", visual_len=0, vocab=0, visual_adapter=0))
    ids = tiny_backbone.tokenize(["a photo of a"], tiny_backbone.context_length)[0]
    words = ids[1:5]
    expected = tiny_backbone.model.token_embedding.weight[words]
    assert torch.allclose(model.prompts.text.tokens[0, :4], expected)


def test_gradients_reach_only_the_prompts(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, visual_depth=2, gate=False, vocab=0, visual_adapter=0)).train()
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


def test_gated_prompts_start_exactly_at_zero_shot_and_learn_from_there(tiny_backbone):
    gated = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, gate=True, vocab=0, visual_adapter=0)).train()
    plain = PromptedCLIP(tiny_backbone, PromptConfig.none()).eval()
    ids = gated.tokenize(["a red circle on the left", "a blue star"])
    images = torch.randn(2, 3, 32, 32)
    image_f, text_f = gated.encode_image(images), gated.encode_text(ids)
    with torch.no_grad():
        assert torch.allclose(image_f, plain.encode_image(images), atol=1e-6)
        assert torch.allclose(text_f, plain.encode_text(ids), atol=1e-6)
    clip_loss(image_f, text_f, tiny_backbone.logit_scale).backward()
    # At g = 0 the loss already moves the gates (and only through them the prompts).
    assert gated.prompts.text.gate.grad.abs().sum() > 0 and gated.prompts.visual.gate.grad.abs().sum() > 0
    assert gated.prompts.text.tokens.grad.abs().sum() == 0


def test_a_gated_layer_is_prefix_attention_written_out(tiny_backbone):
    """Block i with prompts P and gates g: out = A(x) + g * softmax(q K_P^T / sqrt(d)) V_P, then out-proj and MLP."""
    from dbprompt.backbones.base import LayerPrompt

    view = tiny_backbone.blocks("text")[0]
    block = tiny_backbone.model.transformer.resblocks[0]
    torch.manual_seed(0)
    x, prompts, gate = torch.randn(2, 7, 64), torch.randn(3, 64), torch.tensor([0.7, -1.3])
    mask = torch.full((7, 7), float("-inf")).triu(1)
    with torch.no_grad():
        got = view.run(x, mask, LayerPrompt(prefix=prompts, gate=gate))
        w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
        h, hp = block.ln_1(x), block.ln_1(prompts)
        q, k, v = (h @ w.t() + b).split(64, dim=-1)
        _, kp, vp = (hp @ w.t() + b).split(64, dim=-1)
        heads = lambda t: t.unflatten(-1, (2, 32)).transpose(-3, -2) if t.ndim == 3 else t.unflatten(-1, (2, 32)).transpose(0, 1)
        q, k, v, kp, vp = map(heads, (q, k, v, kp, vp))
        own = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5 + mask, dim=-1) @ v
        to_prompts = torch.softmax(q @ kp.transpose(-1, -2) / 32**0.5, dim=-1) @ vp
        a = (own + gate.view(1, 2, 1, 1) * to_prompts).transpose(1, 2).reshape(2, 7, 64)
        x1 = x + block.attn.out_proj(a)
        expected = x1 + block.mlp(block.ln_2(x1))
    assert torch.allclose(got, expected, atol=1e-5)


def test_prompt_dropout_leaves_dropped_prompts_out_of_the_keys(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=8, visual_len=0, gate=True, vocab=0, dropout=0.5, visual_adapter=0)).train()
    torch.manual_seed(0)
    sizes = {p.prefix.shape[0] for _ in range(20) for p in model.prompts.text.layer_prompts()}
    assert len(sizes) > 1 and max(sizes) <= 8  # a random subset of the 8 tokens each step
    model.eval()
    assert all(p.prefix.shape[0] == 8 for p in model.prompts.text.layer_prompts())
