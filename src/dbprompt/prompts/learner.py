"""dbprompt's prompt method: gated deep prompts on both towers, word offsets, image adapters.

One module owns every learnable vector of a database's prompts (CoOp's PromptLearner): only its
parameters go to the optimizer, and its state dict is exactly what a prompt file holds. Every
part starts at zero-shot: gates, offsets and adapters' up-projections are zero.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..backbones.base import (
    BackboneAdapter,
    BlockPrompt,
    LayerHook,
    UnsupportedPromptError,
)
from .adapters import BlockAdapters
from .config import PromptConfig
from .method import PromptMethod
from .tokens import GatedPrompts
from .vocabulary import TokenOffsets, frequent_tokens

VOCABULARY_IDS = "vocab.ids"


class PromptLearner(PromptMethod):
    """Textual and visual gated prompts, vocabulary offsets and image adapters of one database, for one backbone."""

    name = "dbprompt"
    config_class = PromptConfig

    def __init__(self, backbone: BackboneAdapter, config: PromptConfig, vocabulary: torch.Tensor | None = None):
        """`vocabulary`: the token ids that get offsets when `config.vocab` is on (see `for_captions`)."""
        super().__init__(backbone, config)
        check_supported(backbone, config)
        # Built in this order, so that a seed draws the same initial values as every earlier version.
        self.visual_adapters = (
            BlockAdapters(backbone.vision_num_layers, backbone.vision_width, config.visual_adapter) if config.visual_adapter else None
        )
        self.vocab: TokenOffsets | None = None
        if config.vocab:
            if vocabulary is None:
                raise ValueError("PromptConfig.vocab needs the token ids to tune (PromptedCLIP.for_captions chooses them)")
            if vocabulary.numel() > config.vocab:
                raise ValueError(f"{vocabulary.numel()} vocabulary ids, more than PromptConfig.vocab = {config.vocab}")
            if vocabulary.numel() and int(vocabulary.max()) >= backbone.vocab_size:
                raise ValueError(f"vocabulary token id {int(vocabulary.max())} is beyond {backbone.name}'s {backbone.vocab_size} tokens")
            self.vocab = TokenOffsets(vocabulary, backbone.text_width)
        self.text = _gated(backbone, "text", config.text_len, config.text_depth, config.init_std)
        self.visual = _gated(backbone, "image", config.visual_len, config.visual_depth, config.init_std)

    @classmethod
    def caption_arguments(cls, backbone: BackboneAdapter, config: PromptConfig, captions: Sequence[str]) -> dict[str, Any]:
        return {"vocabulary": caption_vocabulary(backbone, config, captions)}

    @classmethod
    def state_arguments(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"vocabulary": state.get(VOCABULARY_IDS)}

    def text_input(self, ids: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, LayerHook | None]:
        return (x if self.vocab is None else self.vocab(ids, x)), ids, None

    def in_blocks(self, tower: str) -> list[BlockPrompt]:
        parts = (self.text,) if tower == "text" else (self.visual, self.visual_adapters)
        return [p for p in parts if p is not None]

    @property
    def acts_on_images(self) -> bool:
        return self.visual is not None or self.visual_adapters is not None

    @property
    def kinds(self) -> list[str]:
        return self.config.kinds

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {n for n, _ in self.named_parameters() if n.endswith(".gate")}


def _gated(backbone: BackboneAdapter, tower: str, length: int, depth: int, std: float) -> GatedPrompts | None:
    if not length:
        return None
    width, layers = (backbone.text_width, backbone.text_num_layers) if tower == "text" else (backbone.vision_width, backbone.vision_num_layers)
    return GatedPrompts(length, width, depth_of(depth, layers), backbone.num_heads(tower), std)


def check_supported(backbone: BackboneAdapter, config: PromptConfig) -> None:
    """Refuse, naming the flag that turns it off, what a tower that cannot take tokens would silently ignore."""
    text_problem, visual_problem = backbone.text_prompt_problem(), backbone.visual_prompt_problem()
    wanted = (
        (config.text_len, text_problem, "textual prompts", "--text-len 0"),
        (config.vocab, text_problem, "word offsets", "--vocab 0"),
        (config.visual_len, visual_problem, "visual prompts", "--visual-len 0"),
        (config.visual_adapter, visual_problem, "image adapters", "--visual-adapter 0"),
    )
    for amount, problem, kind, off in wanted:
        if amount and problem:
            raise UnsupportedPromptError(f"model {backbone.name} cannot take {kind}: {problem}. Use {off}.")
    inside = (("text", config.text_len, "--text-len 0"), ("image", config.visual_len or config.visual_adapter, "--visual-len 0 --visual-adapter 0"))
    for tower, wanted_inside, off in inside:
        if wanted_inside and backbone.blocks(tower) is None:
            raise UnsupportedPromptError(
                f"model {backbone.name}'s {tower} tower has blocks dbprompt cannot open, so neither prompts nor adapters "
                f"can act inside them. Use {off}."
            )


def caption_vocabulary(backbone: BackboneAdapter, config: PromptConfig, captions: Sequence[str]) -> torch.Tensor | None:
    """The token ids `config`'s vocabulary offsets would cover for these training captions (None: no vocabulary)."""
    if not config.vocab:
        return None
    if not captions:
        raise ValueError("PromptConfig.vocab needs training captions to choose its tokens")
    ids = backbone.tokenize(list(captions), backbone.context_length)
    return frequent_tokens(ids, config.vocab)


def depth_of(requested: int, layers: int) -> int:
    """0 means every layer; more than the tower has means every layer too."""
    return layers if requested == 0 else min(requested, layers)
