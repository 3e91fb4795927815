"""The literature's prompts, inserted among the tokens (CoOp, VPT shallow and deep): the lab's baselines.

A prompt method registered with dbprompt from outside it (also through the entry point group
`dbprompt.prompt_methods`, so a prompt file it wrote loads wherever dbprompt-lab is installed).
Learnable tokens go right after a prefix (the start token, the class token); with depth d > 1
the prompt positions are overwritten with a fresh set before each of layers 1..d-1 (deep). Unlike
dbprompt's gated prompts they take positions and attention mass from the real tokens, so they do
not start at zero-shot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from dbprompt.backbones import (
    PROMPT_ID,
    BackboneAdapter,
    LayerHook,
    UnsupportedPromptError,
)
from dbprompt.options import option
from dbprompt.prompts.learner import depth_of
from dbprompt.prompts.method import PromptMethod
from dbprompt.prompts.registry import register_method


@dataclass(frozen=True)
class InsertedConfig:
    text_len: int = option(8, "textual prompt tokens inserted after the start token (0: none)")
    text_depth: int = option(1, "layers with their own textual prompt tokens (1: shallow, 0: every layer)")
    visual_len: int = option(8, "visual prompt tokens inserted after the class token (0: none)")
    visual_depth: int = option(1, "layers with their own visual prompt tokens (1: shallow, 0: every layer)")
    init_std: float = option(0.02, "standard deviation of the tokens' random initialisation")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")

    def replace(self, **changes) -> "InsertedConfig":
        return dataclasses.replace(self, **changes)


class InsertedTokens(nn.Module):
    """`length` learnable tokens per layer [depth, length, width], spliced in after the first `prefix` positions."""

    def __init__(self, length: int, width: int, prefix: int, depth: int, std: float):
        super().__init__()
        self.length, self.prefix, self.depth = length, prefix, depth
        self.tokens = nn.Parameter(torch.randn(depth, length, width) * std)

    def _splice(self, x: torch.Tensor, layer: int, replace: int) -> torch.Tensor:
        prompts = self.tokens[layer].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix + replace :]], dim=1)

    def insert(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, L + length, D]."""
        return self._splice(x, 0, replace=0)

    def layer_hook(self) -> LayerHook | None:
        """Before each of layers 1..depth-1, the prompt positions get that layer's fresh tokens (deep)."""
        if self.depth == 1:
            return None

        def hook(layer: int, x: torch.Tensor) -> torch.Tensor:
            return self._splice(x, layer, replace=self.length) if 0 < layer < self.depth else x

        return hook


@register_method
class InsertedPrompts(PromptMethod):
    """Textual and visual prompt tokens inserted into the sequences, as CoOp and VPT do."""

    name = "inserted"
    config_class = InsertedConfig

    def __init__(self, backbone: BackboneAdapter, config: InsertedConfig):
        super().__init__(backbone, config)
        wanted = ((config.text_len, backbone.text_prompt_problem(), "textual"), (config.visual_len, backbone.visual_prompt_problem(), "visual"))
        for length, problem, kind in wanted:
            if length and problem:
                raise UnsupportedPromptError(f"model {backbone.name} cannot take {kind} prompts: {problem}")
        if config.text_len and config.text_len >= backbone.context_length - 2:
            raise ValueError(f"text_len {config.text_len} leaves no room for a caption in {backbone.name}'s context of {backbone.context_length} tokens")
        self.text = (
            InsertedTokens(config.text_len, backbone.text_width, backbone.text_prefix_len, depth_of(config.text_depth, backbone.text_num_layers), config.init_std)
            if config.text_len
            else None
        )
        self.visual = (
            InsertedTokens(
                config.visual_len, backbone.vision_width, backbone.vision_prefix_len,
                depth_of(config.visual_depth, backbone.vision_num_layers), config.init_std,
            )
            if config.visual_len
            else None
        )

    def text_input(self, ids: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, LayerHook | None]:
        if self.text is None:
            return x, ids, None
        p = self.text
        filler = ids.new_full((ids.shape[0], p.length), PROMPT_ID)
        return p.insert(x), torch.cat([ids[:, : p.prefix], filler, ids[:, p.prefix :]], dim=1), p.layer_hook()

    def image_input(self, x: torch.Tensor) -> tuple[torch.Tensor, int, LayerHook | None]:
        if self.visual is None:
            return x, 0, None
        return self.visual.insert(x), self.visual.length, self.visual.layer_hook()

    def caption_length(self, backbone: BackboneAdapter) -> int:
        """Captions are cut so that caption + inserted prompts fit the context."""
        return backbone.context_length - self.config.text_len

    @property
    def acts_on_images(self) -> bool:
        return self.visual is not None

    @property
    def kinds(self) -> list[str]:
        return [k for k, n in (("textual", self.config.text_len), ("visual", self.config.visual_len)) if n]
