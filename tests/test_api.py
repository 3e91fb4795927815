"""The Python API: the README's example runs as written, and it gives what the CLI gives."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from tinydata import write_database

import dbprompt
from dbprompt.backbones import shim
from dbprompt.cli import main
from dbprompt.data import ReadOptions, SplitConfig
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime
from dbprompt.training.config import TrainConfig
from dbprompt.training.loss import clip_loss

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_python() -> str:
    """The code block of the README's "Python API" section."""
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # two trainings of the proxy backbone at 64 pixels: ~25 s on one core
def test_readme_python_runs_as_written_and_matches_the_cli(tmp_path, monkeypatch, one_thread, capsys):
    monkeypatch.chdir(tmp_path)
    write_database(tmp_path / "my_photos", 60, domain="textual", seed=3, image_size=64)
    exec(compile(readme_python(), str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert Path("photos.safetensors").is_file() and Path("photos.index", "manifest.json").is_file()
    assert "zero-shot" in printed
    # `dbprompt train` with the same options and seed writes the same prompts.
    assert main(["train", "my_photos/", "--out", "cli.safetensors", "--model", "dbprompt-proxy", "--no-progress"]) == 0
    from safetensors.torch import load_file

    api, cli = load_file("photos.safetensors"), load_file("cli.safetensors")
    assert set(api) == set(cli) and all(torch.equal(api[k], cli[k]) for k in api)
    # And `dbprompt eval` reads the file the API wrote, on the split it recorded.
    capsys.readouterr()
    assert main(["eval", "my_photos/", "--prompts", "photos.safetensors", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    python = dbprompt.evaluate("my_photos/", "photos.safetensors")
    assert report["images"] == python.images and set(report["rows"]) == set(python.rows)


def test_api_options_are_the_cli_s_defaults():
    assert dbprompt.PromptConfig() == PromptConfig() and PromptConfig().vocab > 0  # train's defaults, not bare ones
    names = [f.name for cls in (PromptConfig, TrainConfig, SplitConfig, ReadOptions) for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)), "one name, one option: the API shares keyword arguments out by name"
    with pytest.raises(TypeError, match="unknown option"):
        dbprompt.train("nowhere", "x.safetensors", model="dbprompt-tiny", epoch=3)


def test_shimmed_upstream_functions_are_checked():
    assert shim.check() == []


def test_the_shim_check_names_a_function_an_upgrade_removed(monkeypatch):
    from open_clip.transformer import VisionTransformer

    monkeypatch.delattr(VisionTransformer, "_pool")
    assert shim.check() == ["open_clip.transformer.VisionTransformer._pool no longer exists"]


def test_bf16_autocast_runs_on_the_cpu(tiny_backbone):
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=4, vocab=0, visual_adapter=0))
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.normal_(0, 0.5)  # gates open, so the prompts' path is exercised
    images, ids = torch.randn(4, 3, 32, 32), model.tokenize(["a red circle", "a blue star", "a cross", "a heart"])
    with torch.no_grad():
        exact = model.encode_image(images), model.encode_text(ids)
    with Runtime(bf16=True).autocast():
        loss = clip_loss(model.encode_image(images), model.encode_text(ids), tiny_backbone.logit_scale)
        approx = model.encode_image(images), model.encode_text(ids)
    loss.backward()
    assert torch.isfinite(loss) and model.prompts.text.tokens.grad.abs().sum() > 0
    for a, b in zip(exact, approx):
        assert b.dtype == torch.bfloat16  # the towers ran under autocast
        assert torch.nn.functional.cosine_similarity(a, b.float()).min() > 0.98


def test_the_api_says_what_is_wrong_with_a_closed_index_and_wrong_arguments(tmp_path, tiny_backbone):
    from search_fixtures import indexed_world

    import dbprompt

    indexed_world(tmp_path, tiny_backbone, name="shapes", domain="source", n=8, seed=1)
    with pytest.raises(TypeError, match="db must be a database's path .* got NoneType"):
        dbprompt.evaluate(None, model="dbprompt-tiny", pretrained="random")
    searcher = dbprompt.open_index(tmp_path / "shapes", backbone=tiny_backbone)
    assert len(searcher.search("a red circle", k=3)) == 3
    with pytest.raises(TypeError, match="a query is text .* got int"):
        searcher.search(42)
    with pytest.raises(TypeError, match="a text query is a str, got bytes"):
        searcher.search_text(b"a red circle")
    searcher.close()
    with pytest.raises(ValueError, match="this index was closed; open it again"):
        searcher.search("a red circle")
