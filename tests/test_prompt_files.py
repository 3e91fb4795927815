"""Prompt-file formats and prompt methods: format-2 files of dbprompt 0.2, and a method registered from outside."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbprompt.backbones.base import BlockPrompt, BlockView
from dbprompt.cli import main
from dbprompt.data import records_for
from dbprompt.model import PromptedCLIP
from dbprompt.options import option
from dbprompt.prompts.method import PromptMethod
from dbprompt.prompts.registry import method_named, register_method
from dbprompt.storage import PromptFileError, read_prompt_file
from dbprompt.training.config import TrainConfig
from dbprompt.training.trainer import Trainer

FORMAT2 = Path(__file__).parent / "fixtures" / "format2"
LOADS = ["defaults", "shallow-no-vocab", "trained-with-dropout", "phrase-init"]
REFUSED = {"couple": "--couple", "text-norm": "--text-norm", "no-gate": "--no-gate", "readout": "--visual-readout", "visual-start": "--visual-start"}


@pytest.mark.parametrize("name", LOADS)
def test_format_2_files_that_used_kept_options_give_identical_features(tiny_backbone, name):
    """Written by dbprompt 0.2.0 (fixtures/format2/README.md); training-only options do not change what a file computes.

    Equal to float32 rounding, not bit for bit: the features were computed on another CPU, whose matrix
    kernels round differently (an untrained or misread prompt moves them by 1e-2 and more)."""
    expected = load_file(FORMAT2 / "features.safetensors")
    captions = json.loads((FORMAT2 / "captions.json").read_text())
    model = PromptedCLIP.from_prompt_file(FORMAT2 / f"{name}.safetensors", tiny_backbone)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_texts(captions), expected[f"{name}.text"], rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_image(expected["images"]), expected[f"{name}.image"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_format_2_files_that_used_a_removed_option_are_refused_by_its_name(name, capsys):
    path = FORMAT2 / f"{name}.safetensors"
    with pytest.raises(PromptFileError, match=f"written by dbprompt 0.2.0 with {REFUSED[name]} .*train the database again"):
        read_prompt_file(path)
    assert main(["info", str(path)]) == 3
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and REFUSED[name] in err and "Traceback" not in err


@dataclass(frozen=True)
class ShiftConfig:
    scale: float = option(0.0, "starting size of the shift")


@register_method
class TextShift(PromptMethod):
    """A test method from outside the product: a learnable vector added to every text block's MLP output."""

    name = "test-text-shift"
    config_class = ShiftConfig

    class Shift(torch.nn.Module, BlockPrompt):
        def __init__(self, width: int, scale: float):
            super().__init__()
            self.vector = torch.nn.Parameter(torch.full((width,), scale))

        def mlp(self, layer: int, block: BlockView, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            return out + self.vector.to(out.dtype)

    def __init__(self, backbone, config: ShiftConfig):
        super().__init__(backbone, config)
        self.shift = self.Shift(backbone.text_width, config.scale)

    def in_blocks(self, tower: str) -> list[BlockPrompt]:
        return [self.shift] if tower == "text" else []

    @property
    def acts_on_images(self) -> bool:
        return False


def test_a_method_registered_from_outside_trains_saves_and_loads(tiny_backbone, tiny_records, tmp_path):
    assert method_named("test-text-shift") is TextShift
    model = PromptedCLIP(tiny_backbone, ShiftConfig())
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, checkpoint_every=0)
    trainer = Trainer(model, records_for(tiny_records, "train"), records_for(tiny_records, "val"), cfg, progress=False, log=lambda _: None)
    assert trainer.images.frozen  # the method said it leaves images alone: the tower runs once per image
    trainer.run(stop_after_steps=1)
    assert model.prompts.shift.vector.abs().max() > 0  # one step moved it off its start
    path = model.save_prompt_file(tmp_path / "shift.safetensors")
    assert read_prompt_file(path).method == "test-text-shift"
    loaded = PromptedCLIP.from_prompt_file(path, tiny_backbone)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_texts(["a red star"]), model.eval().encode_texts(["a red star"]), atol=1e-3)


def test_a_file_of_a_method_not_installed_says_so(tiny_backbone, tmp_path):
    from hostile import forge_prompt_file

    path = PromptedCLIP(tiny_backbone, ShiftConfig()).save_prompt_file(tmp_path / "shift.safetensors")
    forged = forge_prompt_file(path, tmp_path / "other.safetensors", metadata={"prompt_method": "not-installed"})
    with pytest.raises(PromptFileError, match="prompt method 'not-installed' is not installed"):
        read_prompt_file(forged)
    with pytest.raises(ValueError, match="registered twice"):
        register_method(type("Again", (TextShift,), {}))
