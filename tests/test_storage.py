"""Prompt files round-trip, carry their metadata, never unpickle, and refuse other backbones."""

from __future__ import annotations

import pickle

import pytest
import torch

from dbprompt.backbones import load_backbone
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.compat import IncompatibleError
from dbprompt.storage import PromptFileError, read_prompt_file


@pytest.fixture
def prompt_file(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=3, visual_len=5, visual_depth=2, text_init="a photo of", vocab=0))
    return model, model.save_prompt_file(tmp_path / "p.safetensors", {"best_epoch": 2})


def test_round_trip(prompt_file, tiny_backbone):
    model, path = prompt_file
    pf = read_prompt_file(path)
    assert pf.backbone == "dbprompt-tiny" and pf.pretrained == "random"
    assert pf.fingerprint == tiny_backbone.fingerprint()
    assert pf.config == model.config
    assert pf.extra == {"best_epoch": 2}
    assert pf.parameter_count == 2 * 3 * 64 + 2 * 5 * 64 + 2  # every layer of the tiny towers, two gates
    loaded = PromptedCLIP.from_prompt_file(path)
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
    import dbprompt.storage as storage

    def failing_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(storage, "st_save", failing_save)
    with pytest.raises(RuntimeError):
        model.save_prompt_file(path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(
    "config",
    [
        PromptConfig(text_len=2, visual_len=2, vocab=0),
        PromptConfig(text_len=2, visual_len=0, vocab=0, gate=False),
        PromptConfig(text_len=0, visual_len=3, vocab=0),
        PromptConfig(text_len=2, visual_len=2, vocab=0, couple=True),
        PromptConfig(text_len=1, visual_len=0, vocab=4),
    ],
)
def test_the_expected_tensors_are_what_every_config_writes(tiny_backbone, tmp_path, config):
    from dbprompt.storage import expected_tensors

    model = PromptedCLIP.for_captions(tiny_backbone, config, ["a red star", "a blue circle"])
    path = model.save_prompt_file(tmp_path / "p.safetensors")
    assert set(read_prompt_file(path).tensors) == expected_tensors(config)


def test_tensors_that_do_not_fit_their_config_are_refused(tiny_backbone, tmp_path):
    from hostile import forge_prompt_file

    model = PromptedCLIP.for_captions(tiny_backbone, PromptConfig(text_len=3, visual_len=2, vocab=4), ["a red star"])
    path = model.save_prompt_file(tmp_path / "p.safetensors")
    tensors = read_prompt_file(path).tensors
    cases = {
        "extra name": ({"evil": torch.zeros(1)}, r"no use for: \['evil'\]"),
        "missing name": ({"visual.gate": None}, r"lacks visual.gate \(the visual prompt's gate\), which its prompt config needs"),
        "longer prompt": ({"text.tokens": torch.zeros(2, 9, 64)}, "holds 9 prompt vectors, its config says 3"),
        "wrong rank": ({"text.gate": torch.zeros(2)}, "not 0 dimensions"),
        "more ids than allowed": ({"vocab.ids": torch.arange(5), "vocab.offsets": torch.zeros(5, 64)}, "allows 1 to 4"),
        "offsets for other ids": ({"vocab.offsets": torch.zeros(1, 64)}, "offsets for"),
        "repeated ids": ({"vocab.ids": torch.tensor([1, 1, 2, 3])[: len(tensors["vocab.ids"])]}, "distinct"),
    }
    for name, (changes, message) in cases.items():
        forged = forge_prompt_file(path, tmp_path / "forged.safetensors", tensors=changes)
        with pytest.raises(PromptFileError, match=message):
            read_prompt_file(forged)


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
