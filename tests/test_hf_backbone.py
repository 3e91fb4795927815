"""Hugging Face CLIPModel and SiglipModel through the adapter: exactly the models' own features, prompts of every kind, the day.

Every model is built from its config with random weights (nothing is downloaded); the identity
checks use the real CLIP ViT-B/32 and SigLIP base shapes, the rest tiny ones.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, PreTrainedTokenizerFast, SiglipConfig, SiglipModel

from dbprompt.backbones import load_backbone
from dbprompt.backbones.hf import HFAdapter
from dbprompt.cli import main
from dbprompt.data import load_database
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.storage import read_prompt_file

NO_PROMPTS = PromptConfig.none()
ONE_PASS = PromptConfig(text_len=4, visual_len=4, vocab=0, visual_adapter=4)
TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
# SigLIP's ids: padding and end are both </s>, as in google/siglip-*; no start token.
SIGLIP_IDS = dict(pad_token_id=1, eos_token_id=1, bos_token_id=None)


def clip_config(tiny: bool = True) -> CLIPConfig:
    """transformers' defaults are the ViT-B/32 shape; tiny: two narrow layers a tower, 32 px images."""
    if not tiny:
        return CLIPConfig()
    vision = dict(TINY_TOWER, image_size=32, patch_size=8)
    return CLIPConfig(text_config=dict(TINY_TOWER), vision_config=vision, projection_dim=16)


def siglip_config(tiny: bool = True, vocab_size: int = 32000) -> SiglipConfig:
    """transformers' defaults are the SigLIP base (patch 16, 224 px) shape."""
    if not tiny:
        return SiglipConfig(text_config=dict(SIGLIP_IDS))
    text = dict(TINY_TOWER, vocab_size=vocab_size, max_position_embeddings=32, projection_size=32, **SIGLIP_IDS)
    return SiglipConfig(text_config=text, vision_config=dict(TINY_TOWER, image_size=32, patch_size=8))


def save_clip(folder: Path, *, tokenizer: bool = False, seed: int = 0) -> Path:
    """A random tiny CLIPModel in Hugging Face layout; `tokenizer`: with tokenizer files made from open_clip's BPE."""
    torch.manual_seed(seed)
    CLIPModel(clip_config()).save_pretrained(folder)
    if tokenizer:
        bpe = SimpleTokenizer()
        names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # open_clip's -> HF's spelling
        vocab = {names.get(token, token): i for token, i in bpe.encoder.items()}
        CLIPTokenizer(vocab=vocab, merges=sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)).save_pretrained(folder)
    return folder


def save_siglip(folder: Path, words: list[str], *, tokenizer: bool = True) -> Path:
    """A random tiny SiglipModel with a word-level tokenizer over `words` (padding and end </s>, as SigLIP's)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    torch.manual_seed(0)
    SiglipModel(siglip_config(vocab_size=len(vocab))).save_pretrained(folder)
    if tokenizer:
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>")
        fast.save_pretrained(folder)
    return folder


def caption_words(db: Path) -> list[str]:
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace().pre_tokenize_str
    return sorted({w.lower() for r in load_database(db).records for c in r.captions for w, _ in split(c)})


def adapter_of(model: torch.nn.Module, name: str) -> HFAdapter:
    """An in-memory model through the adapter (these tests give ids directly, so no tokenizer)."""
    return HFAdapter(model.eval(), None, 1, None, name, "random").eval().requires_grad_(False)


def _ids(backbone: HFAdapter, batch: int = 3) -> torch.Tensor:
    """Random ids shaped like real ones: an end token early, halfway and last, then the family's padding."""
    config = backbone.model.config.text_config
    g = torch.Generator().manual_seed(0)
    length = backbone.context_length
    ids = torch.randint(3, min(config.vocab_size, 40000) - 1, (batch, length), generator=g)
    pad = 0 if backbone.family == "clip" else config.pad_token_id
    for row, end in enumerate((5, length // 2, length - 1)[:batch]):
        ids[row, end] = config.eos_token_id
        ids[row, end + 1 :] = pad
    return ids


def _images(backbone: HFAdapter, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, *backbone.image_size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=["CLIP ViT-B/32", "SigLIP base"])
def real_shape(request):
    torch.manual_seed(0)
    model = CLIPModel(clip_config(tiny=False)) if "CLIP" in request.param else SiglipModel(siglip_config(tiny=False))
    return request.param, adapter_of(model, request.param)


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tiny(request):
    torch.manual_seed(0)
    model = CLIPModel(clip_config()) if request.param == "clip" else SiglipModel(siglip_config())
    return request.param, adapter_of(model, f"tiny {request.param}")


def test_zero_prompts_and_closed_gates_give_get_text_features_and_get_image_features(real_shape):
    name, backbone = real_shape
    ids, images = _ids(backbone), _images(backbone)
    with torch.no_grad():
        text, image = backbone.encode_text(ids), backbone.encode_image(images)
        assert text.shape == (3, backbone.model.config.text_config.projection_size if "SigLIP" in name else 512)
        for config in (NO_PROMPTS, ONE_PASS):  # ONE_PASS: gated prompts and norm offsets, all at 0
            model = PromptedCLIP(backbone, config).eval()
            assert (model.encode_text(ids, normalize=False) - text).abs().max() <= 1e-5, (name, config)
            assert (model.encode_image(images, normalize=False) - image).abs().max() <= 1e-5, (name, config)


def test_the_end_token_pools_clip_text_and_padding_matters_only_to_siglip(tiny):
    family, backbone = tiny
    ids = _ids(backbone)
    with torch.no_grad():
        changed = ids.clone()
        changed[0, 7:] = 5  # row 0 ends at 5: only its padding changes
        moved = (backbone.encode_text(changed) - backbone.encode_text(ids))[0].abs().max()
    assert (moved > 1e-4) == (family == "siglip")
    assert backbone.text_padding_is_inert() == (family == "clip")


def _open_everything(model: PromptedCLIP) -> None:
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.normal_(0, 0.3)


def test_each_layer_runs_once_per_encode(tiny):
    family, backbone = tiny
    model = PromptedCLIP(backbone, ONE_PASS).eval()
    calls = []
    mlps = [m.mlp for m in backbone.modules() if type(m).__name__.endswith("EncoderLayer")]
    handles = [mlp.register_forward_pre_hook(lambda *_: calls.append(1)) for mlp in mlps]
    try:
        with torch.no_grad():
            model.encode_image(_images(backbone))
            model.encode_text(_ids(backbone, 2))
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == backbone.text_num_layers + backbone.vision_num_layers, family


def test_gradients_reach_the_prompts_and_never_the_backbone(tiny):
    family, backbone = tiny
    model = PromptedCLIP(backbone, ONE_PASS).train()
    _open_everything(model)
    loss = (model.encode_image(_images(backbone)) @ model.encode_text(_ids(backbone, 2)).t()).sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.prompts.named_parameters()}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), family
    assert all(p.grad is None for p in backbone.parameters()), family


def test_every_prompt_kind_changes_the_features(tiny):
    """Gated prompts on both towers, word offsets and image adapters: each moves what it should."""
    family, backbone = tiny
    ids, images = _ids(backbone), _images(backbone)
    base = PromptedCLIP(backbone, NO_PROMPTS).eval()
    vocabulary = torch.unique(ids)[:8]
    config = PromptConfig(text_len=2, visual_len=2, vocab=8, visual_adapter=2)
    model = PromptedCLIP(backbone, config, vocabulary=vocabulary).eval()
    _open_everything(model)
    short = ids
    with torch.no_grad():
        assert not torch.allclose(model.encode_image(images), base.encode_image(images), atol=1e-4)
        assert not torch.allclose(model.encode_text(short), base.encode_text(short), atol=1e-4)
        assert model.encode_text(short).shape == base.encode_text(short).shape


def test_clip_without_tokenizer_files_uses_open_clip_s_bpe_and_says_so(tmp_path, caplog):
    with_files = load_backbone(f"hf:{save_clip(tmp_path / 'with', tokenizer=True)}")
    with caplog.at_level("WARNING"):
        without = load_backbone(f"hf:{save_clip(tmp_path / 'without')}")
    assert "no tokenizer files; using the CLIP BPE tokenizer open_clip ships" in caplog.text
    captions = ["A red circle, on grass!", "two   blue squares", "x" * 300]
    assert torch.equal(with_files.tokenize(captions, 77), without.tokenize(captions, 77))
    ids = without.tokenize(captions, 20)
    assert ids[0, 0] == 49406 and ids[2, -1] == 49407 and ids[1, -1] == 0  # start, truncation keeps the end, 0 pads
    assert with_files.text_prefix_len == without.text_prefix_len == 1


def test_siglip_without_tokenizer_files_is_refused(tmp_path):
    folder = save_siglip(tmp_path / "siglip", ["a", "cat"], tokenizer=False)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer files .* SigLIP's tokenizer is not CLIP's BPE"):
        load_backbone(f"hf:{folder}")


def test_a_tokenizer_that_needs_a_missing_package_says_which(tmp_path):
    if importlib.util.find_spec("sentencepiece") is not None:
        pytest.skip("sentencepiece is installed here")
    folder = save_siglip(tmp_path / "siglip", ["a", "cat"], tokenizer=False)
    (folder / "spiece.model").write_bytes(b"a SentencePiece model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "SiglipTokenizer"}))
    with pytest.raises(ValueError, match=r"SiglipTokenizer requires the SentencePiece library.*pip install sentencepiece"):
        load_backbone(f"hf:{folder}")


def test_a_directory_records_its_name_and_never_random_for_real_weights(tmp_path, monkeypatch):
    folder = save_clip(tmp_path / "clip", seed=7)  # seed 0 would be the random weights themselves
    monkeypatch.chdir(tmp_path)
    real = load_backbone("hf:clip")
    assert real.name == real.pretrained == f"hf:{folder.resolve()}"  # its own weights, recorded as shipped ones are
    assert load_backbone(real.name, real.pretrained).fingerprint() == real.fingerprint()  # as a prompt file reloads it
    random_a, random_b = load_backbone("hf:clip", "random"), load_backbone("hf:clip", "random")
    assert random_a.pretrained == "random" and random_a.fingerprint() == random_b.fingerprint() != real.fingerprint()
    assert load_backbone("hf:clip", "random", seed=1).fingerprint() != random_a.fingerprint()
    with pytest.raises(ValueError, match="means nothing for hf:"):
        load_backbone("hf:clip", "laion2b_s34b_b79k")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_backbone("hf:./nowhere")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=dict(TINY_TOWER), vision_config=dict(TINY_TOWER, image_size=32))).vision_model.save_pretrained(tmp_path / "vision")
    with pytest.raises(ValueError, match="'clip_vision_model' model; dbprompt opens transformers' CLIPModel and SiglipModel"):
        load_backbone(f"hf:{tmp_path / 'vision'}")


def test_the_image_transform_is_the_model_s_processor(tmp_path):
    from PIL import Image
    from transformers import CLIPImageProcessor

    folder = save_clip(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    backbone = load_backbone(f"hf:{folder}")
    white = backbone.image_transform()(Image.new("RGB", (64, 48), "white"))
    assert white.shape == (3, 32, 32) and torch.allclose(white, torch.ones_like(white))  # (1 - 0.5) / 0.5


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_the_day_through_hf_dir(family, tiny_db, tmp_path, capsys):
    """train (1 epoch) -> eval -> index -> search; a directory is named again (a recorded path is never opened)."""
    folder = save_clip(tmp_path / "m") if family == "clip" else save_siglip(tmp_path / "m", caption_words(tiny_db))
    prompts, index = tmp_path / "p.safetensors", tmp_path / "index"
    common = ["--no-progress", "--batch-size", "8"]
    args = ["train", str(tiny_db), "--model", f"hf:{folder}", "--out", str(prompts), "--epochs", "1", *common]
    assert main(args + ["--text-len", "2", "--visual-len", "2", "--vocab", "64", "--visual-adapter", "4"]) == 0
    recorded = read_prompt_file(prompts)
    assert recorded.backbone == recorded.pretrained == f"hf:{folder}"
    capsys.readouterr()
    model = ["--model", f"hf:{folder}"]
    assert main(["eval", str(tiny_db), "--prompts", str(prompts), *model, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 2 and any(name.startswith("prompts (textual+visual+vocabulary") for name in rows)
    assert main(["index", str(tiny_db), "--prompts", str(prompts), "--out", str(index), *model, *common]) == 0
    capsys.readouterr()
    assert main(["search", str(index), "a small red star", "-k", "3", *model, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 3


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_the_padding_id_is_what_the_tokenizer_writes(family, tiny_db, tmp_path):
    # CLIP's config says pad_token_id 1 while its captions are padded with 0 (what trimming and the ONNX export use).
    folder = save_clip(tmp_path / "m") if family == "clip" else save_siglip(tmp_path / "m", caption_words(tiny_db))
    backbone = load_backbone(f"hf:{folder}")
    assert int(backbone.tokenize(["a red star"], backbone.context_length)[0, -1]) == backbone.text_pad_id
