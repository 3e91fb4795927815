"""A prompt method: a config dataclass and the module that owns every learnable vector (PEFT's tuner types).

A method's module meets the backbone only through its stage hooks below and the `BlockPrompt`s it
hands the blocks: it knows nothing of training or files. Methods are found by name in `registry`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..backbones.base import BackboneAdapter, BlockPrompt, LayerHook


class PromptMethod(nn.Module):
    """The learnable vectors of one database's prompts for one backbone: exactly what a prompt file holds.

    Subclasses set `name` and `config_class` (a frozen dataclass whose fields carry their help, see
    `options.option`), build their parameters in `__init__(backbone, config, **state_arguments)`
    and override the hooks they use; every default leaves the backbone's computation as it is.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, backbone: BackboneAdapter, config: Any):
        super().__init__()
        self.config = config

    @classmethod
    def caption_arguments(cls, backbone: BackboneAdapter, config: Any, captions: Sequence[str]) -> dict[str, Any]:
        """The constructor's arguments beyond the config for a database with these training captions
        (a method may choose its words from them)."""
        return {}

    @classmethod
    def state_arguments(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The constructor's arguments beyond the config that a saved state carries (e.g. token ids)."""
        return {}

    # --- stage hooks ------------------------------------------------------------------------------
    def text_input(self, ids: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, LayerHook | None]:
        """Token embeddings x [B, L, D] of ids [B, L] -> (embeddings, ids of the same length, hook between layers).

        Inserted positions carry `backbones.base.PROMPT_ID` in the ids, so pooling and masks skip them."""
        return x, ids, None

    def image_input(self, x: torch.Tensor) -> tuple[torch.Tensor, int, LayerHook | None]:
        """Image tokens [B, prefix + patches, D] -> (tokens, how many were inserted after the prefix, hook)."""
        return x, 0, None

    def in_blocks(self, tower: str) -> list[BlockPrompt]:
        """What acts inside the tower's ("text" or "image") blocks."""
        return []

    def caption_length(self, backbone: BackboneAdapter) -> int:
        """Tokens a caption may take: the context, less any positions the method inserts."""
        return backbone.context_length

    @property
    def acts_on_images(self) -> bool:
        """Whether anything of this module changes what the image tower computes (else training keeps its
        output per image instead of running it every step)."""
        return True

    @property
    def kinds(self) -> list[str]:
        """What this module adapts, in words ("textual", "visual", ...)."""
        return []

    def no_weight_decay(self) -> set[str]:
        """Gates and other vectors that decay would pull back towards zero-shot for no reason
        (as CLIP spares gains and biases)."""
        return {n for n, p in self.named_parameters() if p.ndim < 2}


def config_to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(cls: type, data: dict) -> Any:
    """A method's config from a file's JSON object, each option of its own type first (the dataclass
    itself trusts its caller): an unknown or mistyped option is a ValueError naming it."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"unknown prompt options {unknown} (written by a newer dbprompt?)")
    for name, value in data.items():
        kinds = typing.get_args(hints[name]) or (hints[name],)
        kinds += (int,) if float in kinds else ()
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"prompt option {name} is {type(value).__name__}")
    return cls(**data)
