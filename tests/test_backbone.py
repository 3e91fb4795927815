"""The adapter's token stages reproduce each model family exactly, and refuse what cannot take tokens."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

from dbprompt.backbones import UnsupportedPromptError, load_backbone
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime

from conftest import adapter_for

NO_PROMPTS = PromptConfig.none()


def _custom_text_vit_b_32():
    torch.manual_seed(0)
    net = open_clip.create_model("ViT-B-32", force_custom_text=True)
    assert isinstance(net, CustomTextCLIP)
    return adapter_for(net, "ViT-B-32 (CustomTextCLIP)")


FAMILIES = {
    "ViT-B-32": lambda: load_backbone("ViT-B-32"),
    "ViT-B-16-SigLIP": lambda: load_backbone("ViT-B-16-SigLIP"),
    "CustomTextCLIP": _custom_text_vit_b_32,
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param, FAMILIES[request.param]()


def _ids(backbone, batch: int = 3) -> torch.Tensor:
    """Random token ids shaped like real ones: an end token that is the row maximum, then padding."""
    g = torch.Generator().manual_seed(0)
    length = backbone.context_length
    vocab = backbone.model.vocab_size
    ids = torch.randint(1, vocab - 2, (batch, length), generator=g)
    for row, end in enumerate((5, length // 2, length - 1)[:batch]):
        ids[row, end] = vocab - 1
        ids[row, end + 1 :] = 0
    return ids


def test_identity_without_prompts(family):
    name, backbone = family
    model = PromptedCLIP(backbone, NO_PROMPTS).eval()
    ids = _ids(backbone)
    images = torch.randn(2, 3, *backbone.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text_diff = (model.encode_text(ids, normalize=False) - backbone.encode_text(ids)).abs().max()
        image_diff = (model.encode_image(images, normalize=False) - backbone.encode_image(images)).abs().max()
    assert text_diff <= 1e-5, name
    assert image_diff <= 1e-5, name


ONE_PASS = PromptConfig(text_len=4, visual_len=4, vocab=0, visual_adapter=4)


def _open_everything(model: PromptedCLIP) -> None:
    """Gates open and adapters' up-projections non-zero: the prompts now change both towers."""
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.normal_(0, 0.3)


def test_gated_prompts_and_adapters_start_exactly_at_open_clip_s_encoders(family):
    name, backbone = family
    model = PromptedCLIP(backbone, ONE_PASS).eval()
    ids = _ids(backbone)
    images = torch.randn(2, 3, *backbone.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text_diff = (model.encode_text(ids, normalize=False) - backbone.encode_text(ids)).abs().max()
        image_diff = (model.encode_image(images, normalize=False) - backbone.encode_image(images)).abs().max()
        _open_everything(model)
        moved = (model.encode_text(ids) - PromptedCLIP(backbone, NO_PROMPTS).encode_text(ids)).abs().max()
    assert text_diff <= 1e-5 and image_diff <= 1e-5, name
    assert moved > 1e-3, name  # and they are not inert


def test_each_block_runs_once_per_encode(family):
    """One pass: no second, unprompted run of either tower."""
    name, backbone = family
    model = PromptedCLIP(backbone, ONE_PASS).eval()
    calls = []
    handles = [
        m.register_forward_pre_hook(lambda *_: calls.append(1))
        for m in backbone.modules()
        if m.__class__.__name__ in ("ResidualAttentionBlock", "Block") and hasattr(m, "mlp")
    ]
    mlps = [m.mlp for m in backbone.modules() if m.__class__.__name__ in ("ResidualAttentionBlock", "Block")]
    for mlp in mlps:
        handles.append(mlp.register_forward_pre_hook(lambda *_: calls.append(1)))
    try:
        with torch.no_grad():
            model.encode_image(torch.randn(2, 3, *backbone.image_size))
            model.encode_text(_ids(backbone, 2))
    finally:
        for h in handles:
            h.remove()
    # Prompted blocks run in parts (their MLP is called), the others whole: each block counts once.
    assert len(calls) == backbone.text_num_layers + backbone.vision_num_layers, name


def test_bf16_activations_on_a_cpu_go_through_the_blocks_parts(family):
    """open_clip's own attention copies strided bf16 heads before every product (3x slower on a CPU):
    unprompted blocks that get bf16 activations run as the prompts' parts, with the block's own features."""
    name, backbone = family
    model = PromptedCLIP(backbone, NO_PROMPTS).eval()
    images = torch.randn(2, 3, *backbone.image_size, generator=torch.Generator().manual_seed(1))
    whole: list[int] = []
    handles = [
        m.register_forward_pre_hook(lambda *_: whole.append(1))
        for m in backbone.image_tower.modules()
        if m.__class__.__name__ in ("ResidualAttentionBlock", "Block") and hasattr(m, "mlp")
    ]
    try:
        with torch.no_grad():
            own = backbone.encode_image(images)
            whole.clear()
            with Runtime(bf16=True).autocast():
                bf16_tokens = backbone.image_tokens(images).dtype == torch.bfloat16
                features = model.encode_image(images, normalize=False)
    finally:
        for h in handles:
            h.remove()
    assert (whole == []) if bf16_tokens else (len(whole) == backbone.vision_num_layers), name
    assert torch.nn.functional.cosine_similarity(features.float(), own, dim=-1).min() > 0.99, name


def test_gradients_reach_the_prompts_and_never_the_backbone(family):
    name, backbone = family
    model = PromptedCLIP(backbone, ONE_PASS).train()
    _open_everything(model)
    images = torch.randn(2, 3, *backbone.image_size)
    loss = (model.encode_image(images) @ model.encode_text(_ids(backbone, 2)).t()).sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.prompts.named_parameters()}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), name
    assert all(p.grad is None for p in backbone.parameters()), name


def test_prompts_change_both_towers(family):
    name, backbone = family
    text_len = 0 if "SigLIP" in name else 4  # SigLIP's tokenizer comes from the hub; ids below are raw
    model = PromptedCLIP(backbone, PromptConfig(text_len=text_len, visual_len=4, visual_depth=2, vocab=0, visual_adapter=0)).eval()
    _open_everything(model)
    base = PromptedCLIP(backbone, NO_PROMPTS).eval()
    images = torch.randn(2, 3, *backbone.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert model.encode_image(images).shape == base.encode_image(images).shape
        assert not torch.allclose(model.encode_image(images), base.encode_image(images))
        if text_len:
            ids = model.tokenize(["a red circle", "a blue star"])
            assert ids.shape[1] == backbone.context_length  # gated prompts take no positions
            assert not torch.allclose(model.encode_text(ids), base.encode_texts(["a red circle", "a blue star"]))


def _small_text_cfg(**kw) -> CLIPTextCfg:
    return CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1, **kw)


def test_resnet_tower_refuses_visual_prompts_but_takes_textual():
    torch.manual_seed(0)
    net = CLIP(32, CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=32), _small_text_cfg())
    backbone = adapter_for(net, "RN-tiny")
    with pytest.raises(UnsupportedPromptError, match=r"RN-tiny cannot take visual prompts.*ModifiedResNet"):
        PromptedCLIP(backbone, PromptConfig(text_len=2, visual_len=2, vocab=0, visual_adapter=0))
    with pytest.raises(UnsupportedPromptError, match=r"RN-tiny cannot take image adapters.*--visual-adapter 0"):
        PromptedCLIP(backbone, PromptConfig(text_len=2, visual_len=0, vocab=0, visual_adapter=4))
    model = PromptedCLIP(backbone, PromptConfig(text_len=2, visual_len=0, vocab=0, visual_adapter=0))
    assert model.encode_texts(["a red circle"]).shape == (1, 32)
    # Training sizes what it keeps per image from the tower's output width, known for ResNet towers too,
    # and the ResNet tower, which takes nothing, encodes images as its own forward does.
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert backbone.embed_dim == model.encode_image(images).shape[1] == 32
        assert torch.equal(model.encode_image(images, normalize=False), backbone.encode_image(images))


def test_coca_style_text_tower_refuses_textual_prompts():
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32)
    net = CustomTextCLIP(32, vision, _small_text_cfg(embed_cls=True))
    backbone = adapter_for(net, "coca-tiny")
    with pytest.raises(UnsupportedPromptError, match=r"coca-tiny cannot take textual prompts.*class token"):
        PromptedCLIP(backbone, PromptConfig(text_len=2, visual_len=0, vocab=0, visual_adapter=0))
    with pytest.raises(UnsupportedPromptError, match=r"coca-tiny cannot take word offsets.*class token.*--vocab 0"):
        PromptedCLIP(backbone, PromptConfig(text_len=0, visual_len=0, visual_adapter=0))
    model = PromptedCLIP(backbone, PromptConfig(text_len=0, visual_len=2, vocab=0, visual_adapter=0))
    assert model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 32)
    # The text tower, which takes nothing, encodes captions as its own forward does.
    ids = backbone.tokenize(["a red circle"], backbone.context_length)
    with torch.no_grad():
        assert torch.equal(model.encode_text(ids, normalize=False), backbone.encode_text(ids))


def test_random_weights_are_reproducible_and_fingerprinted():
    a, b = load_backbone("dbprompt-tiny"), load_backbone("dbprompt-tiny")
    c = load_backbone("dbprompt-tiny", seed=1)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert all(not p.requires_grad for p in a.parameters())
    assert not a.training


def test_unknown_model_and_missing_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'ViT-Nope'"):
        load_backbone("ViT-Nope")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_backbone("dbprompt-tiny", str(tmp_path / "missing.safetensors"))


def test_local_checkpoint_file_loads(tmp_path, tiny_backbone):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    state = {k: v.contiguous() for k, v in load_backbone("dbprompt-tiny", seed=3).model.state_dict().items()}
    save_file(state, str(path))
    loaded = load_backbone("dbprompt-tiny", str(path))
    assert loaded.fingerprint() == load_backbone("dbprompt-tiny", seed=3).fingerprint()
    assert loaded.fingerprint() != tiny_backbone.fingerprint()
