"""The lab's inserted prompts (CoOp, VPT): where they go, where pooling reads, where gradients flow, and that
dbprompt loads their prompt files through the registry."""

from __future__ import annotations

import torch

from dbprompt.model import PromptedCLIP
from dbprompt.prompts.registry import method_named
from dbprompt.training.loss import clip_loss
from dbprompt_lab.prompts import InsertedConfig, InsertedPrompts

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
    model = PromptedCLIP(tiny_backbone, InsertedConfig(text_len=6, text_depth=1, visual_len=0)).eval()
    ids = model.tokenize([LONG_CAPTION, "a red circle"])
    assert ids.shape == (2, tiny_backbone.context_length - 6)
    eot = tiny_backbone.tokenizer.eot_token_id
    assert ids[0, -1] == eot  # truncated, but the end token survives
    assert (ids[1] == eot).nonzero().item() < ids.shape[1] - 1
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids), _reference_text_features(model, ids), atol=1e-5)


def test_visual_prompts_sit_after_class_token_without_positions(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, InsertedConfig(text_len=0, visual_len=3, visual_depth=1)).eval()
    seen = {}

    def spy(layer, x):
        seen.setdefault(layer, x.clone())
        return x

    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = tiny_backbone.image_tokens(images)
        inserted, count, hook = model.prompts.image_input(tokens)
        assert count == 3 and hook is None  # shallow: no hook between layers
        tiny_backbone.image_from_tokens(inserted, count, spy)
    first = seen[0]
    assert first.shape[1] == tokens.shape[1] + 3
    assert torch.equal(first[:, 1:4], model.prompts.visual.tokens[0].expand(2, -1, -1))
    assert torch.equal(first[:, :1], tokens[:, :1]) and torch.equal(first[:, 4:], tokens[:, 1:])


def test_deep_prompts_replace_prompt_positions_before_each_layer(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, InsertedConfig(text_len=0, visual_len=3, visual_depth=2)).eval()
    hook = model.prompts.visual.layer_hook()
    x = torch.zeros(2, 10, tiny_backbone.vision_width)
    assert torch.equal(hook(0, x), x)
    replaced = hook(1, x)
    assert torch.equal(replaced[:, 1:4], model.prompts.visual.tokens[1].expand(2, -1, -1))
    assert replaced.shape == x.shape and torch.equal(replaced[:, 4:], x[:, 4:])


def test_gradients_reach_only_the_prompts(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, InsertedConfig(text_len=4, text_depth=0, visual_len=4, visual_depth=2)).train()
    ids = model.tokenize(["a red circle", "a blue star", "a green cross"])
    loss = clip_loss(model.encode_image(torch.randn(3, 3, 32, 32)), model.encode_text(ids), tiny_backbone.logit_scale)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompts.text.tokens", "prompts.visual.tokens"}
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert model.prompts.text.tokens.grad.abs().sum() > 0
    assert model.prompts.visual.tokens.grad[1].abs().sum() > 0  # the deep set is used too
    assert model.trainable_parameter_count() == 2 * 4 * 64 + 2 * 4 * 64  # text depth 0 = both layers


def test_a_prompt_file_of_the_lab_method_loads_through_the_registry(tiny_backbone, tmp_path):
    assert method_named("inserted") is InsertedPrompts
    model = PromptedCLIP(tiny_backbone, InsertedConfig(text_len=3, visual_len=2, visual_depth=0)).eval()
    path = model.save_prompt_file(tmp_path / "inserted.safetensors")
    loaded = PromptedCLIP.from_prompt_file(path, tiny_backbone)
    assert loaded.config == model.config and isinstance(loaded.prompts, InsertedPrompts)
    ids, images = model.tokenize(["a red circle"]), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(ids), model.encode_text(ids), atol=1e-3)  # stored as float16
        assert torch.allclose(loaded.encode_image(images), model.encode_image(images), atol=1e-3)
