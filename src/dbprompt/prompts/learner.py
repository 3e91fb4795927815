"""The one module that owns every learnable vector of a database's prompts (CoOp's PromptLearner).

Only its parameters go to the optimizer, and its state dict is exactly what a prompt file holds.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..backbones.base import BackboneAdapter, LayerPrompt, UnsupportedPromptError
from .config import PromptConfig
from .coupling import CoupledPromptTokens
from .adapters import BlockAdapters
from .norms import NormOffsets
from .readout import ImageReadout
from .tokens import PromptTokens
from .vocabulary import TokenOffsets, frequent_tokens

VOCABULARY_IDS = "vocab.ids"


class PromptLearner(nn.Module):
    """Textual prompt, visual prompt, norm offsets and vocabulary offsets of one database, for one backbone."""

    def __init__(self, backbone: BackboneAdapter, config: PromptConfig, vocabulary: torch.Tensor | None = None):
        super().__init__()
        check_supported(backbone, config)
        self.text: PromptTokens | None = None
        self.visual: PromptTokens | None = None
        self.vocab: TokenOffsets | None = None
        self.visual_start = config.visual_start
        inside_image_blocks = bool(config.visual_len and config.gate or config.visual_norm or config.visual_adapter)
        visual_layers = backbone.vision_num_layers - config.visual_start if inside_image_blocks else 0
        if inside_image_blocks and visual_layers < 1:
            raise ValueError(f"visual_start {config.visual_start} leaves none of {backbone.name}'s {backbone.vision_num_layers} image layers")
        self.text_norms = NormOffsets(backbone.text_num_layers, backbone.text_width) if config.text_norm else None
        self.visual_norms = NormOffsets(visual_layers, backbone.vision_width) if config.visual_norm else None
        self.visual_adapters = BlockAdapters(visual_layers, backbone.vision_width, config.visual_adapter) if config.visual_adapter else None
        self.readout = (
            ImageReadout(backbone.vision_num_layers, backbone.vision_width, backbone.embed_dim, config.visual_readout, config.readout_tokens)
            if config.visual_readout
            else None
        )
        text_heads = backbone.num_heads("text") if config.gate and config.text_len else 0
        visual_heads = backbone.num_heads("image") if config.gate and config.visual_len else 0
        if config.vocab:
            if vocabulary is None:
                raise ValueError("PromptConfig.vocab needs the token ids to tune: build with PromptedCLIP.for_captions")
            if len(vocabulary) > config.vocab:
                raise ValueError(f"{len(vocabulary)} vocabulary ids, more than PromptConfig.vocab = {config.vocab}")
            self.vocab = TokenOffsets(vocabulary, backbone.text_width, config.dropout)
        if config.text_len:
            if not config.gate and config.text_len >= backbone.context_length - 2:
                raise ValueError(
                    f"text_len {config.text_len} leaves no room for a caption in "
                    f"{backbone.name}'s context of {backbone.context_length} tokens"
                )
            self.text = PromptTokens(
                config.text_len,
                backbone.text_width,
                prefix=0 if config.gate else backbone.text_prefix_len,  # gated prompts take no position
                depth=depth_of(config.text_depth, backbone.text_num_layers),
                std=config.init_std,
                init=phrase_embeddings(backbone, config.text_init) if config.text_init else None,
                heads=text_heads,
                dropout=config.dropout,
            )
        if config.couple:
            self.visual = self._coupled_visual(backbone, config, visual_heads)
        elif config.visual_len:
            self.visual = PromptTokens(
                config.visual_len,
                backbone.vision_width,
                prefix=backbone.vision_prefix_len,
                depth=depth_of(config.visual_depth, visual_layers if config.gate else backbone.vision_num_layers),
                std=config.init_std,
                heads=visual_heads,
                dropout=config.dropout,
            )

    def _coupled_visual(self, backbone: BackboneAdapter, config: PromptConfig, heads: int) -> CoupledPromptTokens:
        assert self.text is not None  # PromptConfig checks couple needs a textual prompt
        visual_depth = depth_of(config.visual_depth, backbone.vision_num_layers)
        if visual_depth != self.text.depth:
            raise ValueError(
                f"couple needs one prompt depth on both towers; {backbone.name} gives text depth "
                f"{self.text.depth} and visual depth {visual_depth}: set --text-depth and --visual-depth"
            )
        return CoupledPromptTokens(self.text, backbone.vision_width, backbone.vision_prefix_len, heads, config.dropout)

    def layers(self, tower: str) -> list[LayerPrompt | None] | None:
        """What each layer of the tower gets inside its block: gated prompts and norm offsets (None: nothing)."""
        prompt, norms = (self.text, self.text_norms) if tower == "text" else (self.visual, self.visual_norms)
        layers: list[LayerPrompt | None] = prompt.layer_prompts() if prompt is not None and prompt.gated else []
        if norms is not None:
            layers = norms.apply(layers)
        if tower == "image" and self.visual_adapters is not None:
            layers = self.visual_adapters.apply(layers)
        if tower == "image" and layers:
            layers = [None] * self.visual_start + layers  # the first layers are the backbone's alone
        return layers or None

    def no_weight_decay(self) -> set[str]:
        """Gates: scalars that decay would pull back towards zero-shot for no reason (as CLIP spares gains and biases)."""
        return {n for n, p in self.named_parameters() if p.ndim < 2}


def check_supported(backbone: BackboneAdapter, config: PromptConfig) -> None:
    """Refuse, naming the flag that turns it off, what a tower that cannot take tokens would silently ignore."""
    text_problem, visual_problem = backbone.text_prompt_problem(), backbone.visual_prompt_problem()
    wanted = (
        (config.text_len, text_problem, "textual prompts", "--text-len 0"),
        (config.vocab, text_problem, "word offsets", "--vocab 0"),
        (config.visual_len, visual_problem, "visual prompts", "--visual-len 0"),
        (config.visual_readout, visual_problem, "an image readout", "--visual-readout 0"),
    )
    for amount, problem, kind, off in wanted:
        if amount and problem:
            raise UnsupportedPromptError(f"model {backbone.name} cannot take {kind}: {problem}. Use {off}.")
    checks = (("text", config.text_len), ("image", config.visual_len))
    for tower, length in checks:
        flag = "text" if tower == "text" else "visual"
        opened = (length and config.gate) or (config.text_norm if tower == "text" else config.visual_norm or config.visual_adapter)
        if opened and backbone.blocks(tower) is None:
            raise UnsupportedPromptError(
                f"model {backbone.name}'s {tower} tower has blocks dbprompt cannot open, so it takes neither gated "
                f"prompts nor norm offsets there. Use --no-gate (inserted prompts) or --{flag}-len 0 and --no-{flag}-norm."
            )


def caption_vocabulary(backbone: BackboneAdapter, config: PromptConfig, captions: Sequence[str]) -> torch.Tensor | None:
    """The token ids `config`'s vocabulary offsets would cover for these training captions (None: no vocabulary)."""
    if not config.vocab:
        return None
    if not captions:
        raise ValueError("PromptConfig.vocab needs training captions to choose its tokens")
    ids = backbone.tokenize(list(captions), caption_length(backbone, config))
    return frequent_tokens(ids, config.vocab)


def phrase_embeddings(backbone: BackboneAdapter, phrase: str) -> torch.Tensor:
    """The token embeddings of a phrase's word pieces (no start or end token)."""
    ids = backbone.tokenize([phrase], backbone.context_length)[0]
    start = backbone.text_prefix_len
    # With a start token the last non-padding id is the end token; without one, padding follows the words.
    filled = ids != backbone.text_pad_id
    end = int(filled.nonzero().max()) if start else int(filled.sum())
    with torch.no_grad():
        return backbone.text_token_embeddings(ids[start:end].unsqueeze(0))[0].float()


def caption_length(backbone: BackboneAdapter, config: PromptConfig) -> int:
    """Captions are cut to this many tokens so that caption + inserted prompts fit the context.

    Gated prompts take no positions: the whole context is the caption's.
    """
    return backbone.context_length - (0 if config.gate else config.text_len)


def depth_of(requested: int, layers: int) -> int:
    """0 means every layer; more than the tower has means every layer too."""
    return layers if requested == 0 else min(requested, layers)
