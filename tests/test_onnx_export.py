"""ONNX export: each family's prompted towers on ONNX Runtime equal PyTorch's, and an export is only used with what made it.

Every model has random weights and dbprompt's default prompts moved off zero, so gates, word offsets and
adapters all act in the graphs compared. Exports are checked at batch 3 (traced at 2); here at 5.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

from conftest import adapter_for
from dbprompt.backbones import load_backbone
from dbprompt.cli import main
from dbprompt.compat import file_sha256
from dbprompt.model import PromptedCLIP
from dbprompt.onnx import export as export_module
from dbprompt.onnx.manifest import IMAGE, MANIFEST, OnnxExportError, StaleExportError
from dbprompt.onnx.towers import OnnxRuntimeMissingError, OnnxTowers
from dbprompt.prompts import PromptConfig

from test_hf_backbone import save_clip, save_siglip

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOLERANCE = 1e-4
CAPTIONS = ["a red circle on a grey background", "two blue stars", "a small green square at the top left", "red"]


def _perturbed(backbone, seed: int = 0) -> PromptedCLIP:
    """dbprompt's default prompts for CAPTIONS, every part moved off zero so that all of them act."""
    model = PromptedCLIP.for_captions(backbone, PromptConfig(), CAPTIONS).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def _custom_text_clip():
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=2)
    net = CustomTextCLIP(32, vision, text)
    return adapter_for(net, "tiny CustomTextCLIP")


FAMILIES = {
    "open_clip ViT (dbprompt-tiny)": lambda tmp: load_backbone("dbprompt-tiny"),
    "CustomTextCLIP": lambda tmp: _custom_text_clip(),
    "Hugging Face CLIP": lambda tmp: load_backbone(f"hf:{save_clip(tmp / 'clip', tokenizer=True)}"),
    "Hugging Face SigLIP": lambda tmp: load_backbone(f"hf:{save_siglip(tmp / 'siglip', ' '.join(CAPTIONS).split())}"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exported_towers_equal_pytorch_at_another_batch(family, tmp_path):
    model = _perturbed(FAMILIES[family](tmp_path))
    manifest = model.export_onnx(tmp_path / "export")
    assert manifest.check["image_max_abs_diff"] <= TOLERANCE and manifest.check["text_max_abs_diff"] <= TOLERANCE
    towers = OnnxTowers.open(tmp_path / "export", expect_fingerprint=model.backbone.fingerprint())
    pixels = torch.randn(5, 3, *model.backbone.image_size, generator=torch.Generator().manual_seed(7))
    ids = model.tokenize(CAPTIONS + ["a grey star"])
    with torch.no_grad():
        want_images, want_texts = model.encode_image(pixels).numpy(), model.encode_text(ids).numpy()
        # The prompts act: features differ from the backbone's own.
        assert np.abs(want_images - PromptedCLIP(model.backbone, PromptConfig.none()).encode_image(pixels).numpy()).max() > 1e-3
    assert np.abs(towers.encode_images(pixels.numpy()) - want_images).max() <= TOLERANCE, family
    assert np.abs(towers.encode_texts(ids.numpy()) - want_texts).max() <= TOLERANCE, family
    assert manifest.image_size == list(model.backbone.image_size) and manifest.mean is not None
    assert manifest.tokenizer["files"], family  # saved beside the towers


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A prompt file of dbprompt-tiny and its export with an int8 image tower, through the CLI."""
    folder = tmp_path_factory.mktemp("onnx")
    prompts = _perturbed(load_backbone("dbprompt-tiny")).save_prompt_file(folder / "p.safetensors")
    assert main(["export", str(prompts), "--onnx", str(folder / "export"), "--int8"]) == 0
    return prompts, folder / "export"


def test_cli_export_records_the_prompt_file_and_its_backbone(exported):
    prompts, export = exported
    manifest = json.loads((export / MANIFEST).read_text())
    model = PromptedCLIP.from_prompt_file(prompts)
    assert manifest["prompt_sha256"] == file_sha256(prompts)
    assert manifest["fingerprint"] == model.backbone.fingerprint() and manifest["opset"] >= 17
    assert manifest["int8"] and manifest["check"]["int8_min_cosine"] > 0.99
    towers = OnnxTowers.open(export, expect_fingerprint=manifest["fingerprint"], expect_sha256=file_sha256(prompts), int8=True)
    pixels = torch.randn(4, 3, *model.backbone.image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model.encode_image(pixels).numpy()
    assert (towers.encode_images(pixels.numpy()) * want).sum(axis=1).min() > 0.99


def test_a_stale_export_is_refused_by_name(exported, tmp_path):
    prompts, export = exported
    manifest = json.loads((export / MANIFEST).read_text())
    other = _perturbed(load_backbone("dbprompt-tiny"), seed=1).save_prompt_file(tmp_path / "other.safetensors")
    with pytest.raises(StaleExportError, match="prompt file"):
        OnnxTowers.open(export, expect_sha256=file_sha256(other))
    with pytest.raises(StaleExportError, match="fingerprint"):
        OnnxTowers.open(export, expect_fingerprint=load_backbone("dbprompt-tiny", "random", seed=1).fingerprint())
    OnnxTowers.open(export, expect_fingerprint=manifest["fingerprint"], expect_sha256=file_sha256(prompts))


def test_a_broken_export_directory_is_refused(exported, tmp_path):
    _, export = exported
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (MANIFEST, "text.onnx"):
        (copy / name).write_bytes((export / name).read_bytes())
    with pytest.raises(OnnxExportError, match=f"incomplete ONNX export, {IMAGE}"):
        OnnxTowers.open(copy)
    (copy / MANIFEST).write_text('{"format": "dbprompt-index/2"}')
    with pytest.raises(OnnxExportError, match="not a dbprompt-onnx"):
        OnnxTowers.open(copy)


def test_a_failed_check_leaves_nothing_and_another_directory_is_never_replaced(tmp_path, monkeypatch):
    model = _perturbed(load_backbone("dbprompt-tiny"))
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # every difference is too large
    with pytest.raises(OnnxExportError, match="export refused"):
        model.export_onnx(tmp_path / "export")
    assert not (tmp_path / "export").exists() and [p.name for p in tmp_path.iterdir()] == []
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    with pytest.raises(OnnxExportError, match="not a dbprompt ONNX export"):
        model.export_onnx(photos)
    assert [p.name for p in photos.iterdir()] == ["a.jpg"]


def test_missing_onnxruntime_is_one_line_naming_the_extra(exported, monkeypatch, capsys):
    prompts, export = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(OnnxRuntimeMissingError, match=r"pip install 'dbprompt\[onnx\]'"):
        OnnxTowers.open(export)
    capsys.readouterr()
    assert main(["export", str(prompts), "--onnx", str(export.parent / "again")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxruntime" in err[0] and "pip install 'dbprompt[onnx]'" in err[0]


def test_runtime_imports_no_torch(exported):
    """A server that runs exported towers needs neither torch nor open_clip."""
    import subprocess

    _, export = exported
    code = (
        "import sys, numpy as np; from dbprompt.onnx import OnnxTowers; t = OnnxTowers.open(sys.argv[1]);"
        "t.encode_texts(np.array([[49406, 320, 49407, 0]])); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(export)], check=True)


def test_exported_open_clip_tokenizer_files_tokenize_as_the_backbone(exported):
    _, export = exported
    tokenizer = json.loads((export / MANIFEST).read_text())["tokenizer"]
    assert tokenizer["kind"] == "open_clip-bpe"
    again = open_clip.tokenizer.SimpleTokenizer(str(export / "tokenizer" / tokenizer["files"][0]))
    assert torch.equal(again(CAPTIONS, context_length=32), load_backbone("dbprompt-tiny").tokenize(CAPTIONS, 32))
