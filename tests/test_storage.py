"""Prompt files round-trip, carry their metadata, never unpickle, and refuse other backbones."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from conftest import as_stored

from dbprompt.backbones import load_backbone
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.compat import IncompatibleError
from dbprompt.storage import PromptFileError, read_prompt_file


@pytest.fixture
def prompt_file(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=3, visual_len=5, visual_depth=2, vocab=0, visual_adapter=0))
    with torch.no_grad():  # open gates: the prompts then change the features
        model.prompts.text.gate.fill_(0.5)
        model.prompts.visual.gate.fill_(0.5)
    return model, model.save_prompt_file(tmp_path / "p.safetensors", {"best_epoch": 2})


def test_round_trip(prompt_file, tiny_backbone):
    model, path = prompt_file
    pf = read_prompt_file(path)
    assert pf.backbone == "dbprompt-tiny" and pf.pretrained == "random"
    assert pf.fingerprint == tiny_backbone.fingerprint()
    assert pf.config == model.config and pf.method == "dbprompt" and pf.metadata["format"] == "dbprompt-prompts/3"
    assert pf.extra == {"best_epoch": 2}
    # every layer of the tiny towers, and a gate per layer and head (2 layers, 2 heads, both towers)
    assert pf.parameter_count == 2 * 3 * 64 + 2 * 5 * 64 + 2 * 2 * 2
    loaded = PromptedCLIP.from_prompt_file(path)
    from safetensors.torch import load_file

    assert load_file(str(path))["text.tokens"].dtype == torch.float16  # half the bytes on disk
    assert pf.tensors["text.tokens"].dtype == torch.float32  # computed in float32
    as_stored(model)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.eval().encode_image(images))
        assert torch.equal(loaded.encode_texts(["a red star"]), model.encode_texts(["a red star"]))


def test_another_backbone_is_refused(prompt_file):
    _, path = prompt_file
    other = load_backbone("dbprompt-tiny", seed=5)
    with pytest.raises(IncompatibleError, match="fingerprint"):
        PromptedCLIP.from_prompt_file(path, other)


def test_pickles_and_garbage_are_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(PromptFileError, match="evil.safetensors: not a dbprompt prompt file"):
        read_prompt_file(evil)
    torch_file = tmp_path / "prompts.pt"
    torch.save({"prompts.text.tokens": torch.zeros(1)}, torch_file)
    with pytest.raises(PromptFileError, match="prompts.pt: not a dbprompt prompt file"):
        read_prompt_file(torch_file)
    with pytest.raises(PromptFileError, match="no such prompt file"):
        read_prompt_file(tmp_path / "missing.safetensors")


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(PromptFileError, match="format None"):
        read_prompt_file(path)


def test_write_is_atomic(prompt_file, monkeypatch):
    model, path = prompt_file
    before = path.read_bytes()
    import safetensors.torch

    def failing_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", failing_save)  # storage imports it where it writes
    with pytest.raises(RuntimeError):
        model.save_prompt_file(path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(
    "config",
    [
        PromptConfig(text_len=2, visual_len=2, vocab=0, visual_adapter=0),
        PromptConfig(text_len=2, text_depth=1, visual_len=0, vocab=0, visual_adapter=3),
        PromptConfig(text_len=0, visual_len=3, vocab=0, visual_adapter=0),
        PromptConfig(text_len=1, visual_len=0, vocab=4),
    ],
)
def test_every_config_round_trips_through_its_file(tiny_backbone, tmp_path, config):
    model = PromptedCLIP.for_captions(tiny_backbone, config, ["a red star", "a blue circle"])
    with torch.no_grad():
        for p in model.prompts.parameters():
            p.normal_()
    path = model.save_prompt_file(tmp_path / "p.safetensors")
    loaded = PromptedCLIP.from_prompt_file(path, tiny_backbone)
    as_stored(model)
    assert {k: v for k, v in loaded.prompt_state_dict().items()}.keys() == model.prompt_state_dict().keys()
    assert all(torch.equal(loaded.prompt_state_dict()[k], v) for k, v in model.prompt_state_dict().items())


def test_tensors_that_do_not_fit_their_config_are_refused(tiny_backbone, tmp_path):
    from hostile import forge_prompt_file

    model = PromptedCLIP.for_captions(tiny_backbone, PromptConfig(text_len=3, visual_len=2, vocab=4), ["a red star"])
    path = model.save_prompt_file(tmp_path / "p.safetensors")
    tensors = read_prompt_file(path).tensors
    cases = {
        "extra name": ({"evil": torch.zeros(1)}, r"unknown \['evil'\]"),
        "missing name": ({"visual.gate": None}, r"missing \['visual.gate'\]"),
        "longer prompt": ({"text.tokens": torch.zeros(2, 9, 64)}, r"text.tokens is torch.float32 \(2, 9, 64\), expected torch.float32 \(2, 3, 64\)"),
        "wrong rank": ({"text.gate": torch.zeros(2)}, r"text.gate is torch.float32 \(2,\), expected"),
        "more ids than allowed": ({"vocab.ids": torch.arange(5), "vocab.offsets": torch.zeros(5, 64)}, "more than PromptConfig.vocab = 4"),
        "offsets for other ids": ({"vocab.offsets": torch.zeros(1, 64)}, "vocab.offsets is"),
        "repeated ids": ({"vocab.ids": torch.tensor([1, 1, 2, 3])[: len(tensors["vocab.ids"])]}, "distinct"),
    }
    for name, (changes, message) in cases.items():
        forged = forge_prompt_file(path, tmp_path / "forged.safetensors", tensors=changes)
        with pytest.raises(PromptFileError, match=message):
            PromptedCLIP.from_prompt_file(forged, tiny_backbone)


def test_file_and_header_sizes_are_bounded_before_reading(tmp_path, monkeypatch):
    import dbprompt.storage as storage

    path = tmp_path / "big.safetensors"
    path.write_bytes((2**20).to_bytes(8, "little") + b"{" + b" " * 2**20)
    monkeypatch.setattr(storage, "MAX_HEADER_BYTES", 2**20 - 1)
    with pytest.raises(PromptFileError, match="header of 1,048,576 bytes"):
        read_prompt_file(path)
    monkeypatch.setattr(storage, "MAX_FILE_BYTES", 100)
    with pytest.raises(PromptFileError, match="1,048,585 bytes; prompt files are under 100"):
        read_prompt_file(path)


def test_atomic_directories_get_the_usual_permissions(tmp_path):
    """mkdtemp makes a private 0700 directory; an index or export replaced through it must not stay one."""
    from dbprompt.atomic import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
