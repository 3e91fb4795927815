"""Where prompts go, where pooling reads, and where gradients flow."""

from __future__ import annotations

import torch

from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.training.loss import clip_loss

LONG_CAPTION = " ".join(["a large red circle on the left and a small blue star at the top"] * 10)


def test_long_captions_keep_their_end_token(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=6, visual_len=0, vocab=0, visual_adapter=0)).eval()
    ids = model.tokenize([LONG_CAPTION, "a red circle"])
    assert ids.shape == (2, tiny_backbone.context_length)  # gated prompts take no positions
    eot = tiny_backbone.tokenizer.eot_token_id
    assert ids[0, -1] == eot  # truncated, but the end token survives
    assert (ids[1] == eot).nonzero().item() < ids.shape[1] - 1


def test_gradients_reach_only_the_prompts(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, visual_depth=1, vocab=0, visual_adapter=2)).train()
    assert not tiny_backbone.training
    with torch.no_grad():  # gates and adapters away from zero, so that every parameter is on a path to the loss
        for p in model.prompts.parameters():
            p.add_(0.1)
    ids = model.tokenize(["a red circle", "a blue star", "a green cross"])
    loss = clip_loss(model.encode_image(torch.randn(3, 3, 32, 32)), model.encode_text(ids), tiny_backbone.logit_scale)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"prompts.{n}" for n in ("text.tokens", "text.gate", "visual.tokens", "visual.gate", "visual_adapters.down", "visual_adapters.up")}
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.prompts.parameters())
    assert model.prompts.text.tokens.grad[1].abs().sum() > 0  # text depth 0: the second layer's set is used too
    assert model.prompts.visual.tokens.shape[0] == 1  # visual depth 1: the first layer only


def test_gated_prompts_start_exactly_at_zero_shot_and_learn_from_there(tiny_backbone):
    gated = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, vocab=0, visual_adapter=0)).train()
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
    from dbprompt.prompts.tokens import GatedPrompts

    view = tiny_backbone.blocks("text")[0]
    block = tiny_backbone.model.transformer.resblocks[0]
    torch.manual_seed(0)
    x, prompts, gate = torch.randn(2, 7, 64), torch.randn(3, 64), torch.tensor([0.7, -1.3])
    mask = torch.full((7, 7), float("-inf")).triu(1)
    gated = GatedPrompts(3, 64, depth=1, heads=2)
    with torch.no_grad():
        gated.tokens[0], gated.gate[0] = prompts, gate
        got = view.run(x, mask, 0, [gated])
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


def test_an_adapter_adds_its_bottleneck_beside_the_mlp(tiny_backbone):
    """out = x1 + MLP(LN2(x1)) + up gelu(down LN2(x1)), with x1 the block's own attention residual."""
    from dbprompt.prompts.adapters import BlockAdapters

    view = tiny_backbone.blocks("image")[1]
    block = tiny_backbone.model.visual.transformer.resblocks[1]
    torch.manual_seed(0)
    adapters = BlockAdapters(layers=2, width=64, rank=3)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        adapters.up.normal_()
        got = view.run(x, None, 1, [adapters])
        x1 = x + block.attn(block.ln_1(x), block.ln_1(x), block.ln_1(x), need_weights=False)[0]
        h = block.ln_2(x1)
        expected = x1 + block.mlp(h) + torch.nn.functional.gelu(h @ adapters.down[1].t()) @ adapters.up[1].t()
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_big_text_batch_is_encoded_in_groups_of_like_length_as_if_each_row_alone(tiny_backbone, monkeypatch):
    import dbprompt.model as model_module

    captions = ["a red circle", LONG_CAPTION[:200], "a small blue star at the top left of a grey background", "x"] * 6
    model = PromptedCLIP.for_captions(tiny_backbone, PromptConfig(text_len=4, visual_len=0, visual_adapter=0), captions).train()
    with torch.no_grad():  # gates and word offsets away from zero: the prompts act on every row
        for p in model.prompts.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = model.tokenize(captions)
    passes: list[int] = []
    monkeypatch.setattr(model, "_text_pass", lambda x, run=model._text_pass: passes.append(x.shape[1]) or run(x))
    monkeypatch.setattr(model_module, "TEXT_GROUP_ROWS", 8)
    grouped = model.encode_text(ids)
    assert len(passes) == 3 and passes == sorted(passes) and passes[0] < passes[-1]  # 24 rows, 3 groups, each trimmed
    alone = torch.cat([model.encode_text(ids[i : i + 1]) for i in range(len(ids))])
    assert torch.allclose(grouped, alone, atol=1e-5)
    grouped.sum().backward()  # gradients flow back through the regrouping
    assert model.prompts.text.tokens.grad.abs().sum() > 0
