"""A frozen backbone with textual and visual prompts: the model dbprompt trains, evaluates and serves."""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import PROMPT_ID, BackboneAdapter, UnsupportedPromptError
from .prompts import CoupledPromptTokens, PromptConfig, PromptTokens, TokenOffsets, frequent_tokens


class PromptedCLIP(nn.Module):
    """Encodes text and images through the backbone's token stages with prompts spliced in.

    The staged path is used even without prompts, so zero-shot and prompted numbers
    always come from the same code.
    """

    def __init__(self, backbone: BackboneAdapter, config: PromptConfig, vocabulary: torch.Tensor | None = None):
        """`vocabulary`: the token ids that get offsets when `config.vocab` is on (see `for_captions`)."""
        super().__init__()
        self.backbone = backbone
        self.config = config
        self._check_supported(backbone, config)
        self.text_prompt: PromptTokens | None = None
        self.visual_prompt: PromptTokens | None = None
        self.text_vocab: TokenOffsets | None = None
        if config.vocab:
            if vocabulary is None:
                raise ValueError("PromptConfig.vocab needs the token ids to tune: build with PromptedCLIP.for_captions")
            if len(vocabulary) > config.vocab:
                raise ValueError(f"{len(vocabulary)} vocabulary ids, more than PromptConfig.vocab = {config.vocab}")
            self.text_vocab = TokenOffsets(vocabulary, backbone.text_width, config.dropout)
        if config.text_len:
            if config.text_len >= backbone.context_length - 2:
                raise ValueError(
                    f"text_len {config.text_len} leaves no room for a caption in "
                    f"{backbone.name}'s context of {backbone.context_length} tokens"
                )
            self.text_prompt = PromptTokens(
                config.text_len,
                backbone.text_width,
                prefix=backbone.text_prefix_len,
                depth=_depth(config.text_depth, backbone.text_num_layers),
                std=config.init_std,
                init=self._phrase_embeddings(config.text_init) if config.text_init else None,
                gate=config.gate,
                dropout=config.dropout,
            )
        if config.couple:
            self.visual_prompt = self._coupled_visual_prompt(backbone, config)
        elif config.visual_len:
            self.visual_prompt = PromptTokens(
                config.visual_len,
                backbone.vision_width,
                prefix=backbone.vision_prefix_len,
                depth=_depth(config.visual_depth, backbone.vision_num_layers),
                std=config.init_std,
                gate=config.gate,
                dropout=config.dropout,
            )

    def _coupled_visual_prompt(self, backbone: BackboneAdapter, config: PromptConfig) -> CoupledPromptTokens:
        assert self.text_prompt is not None  # PromptConfig checks couple needs a textual prompt
        visual_depth = _depth(config.visual_depth, backbone.vision_num_layers)
        if visual_depth != self.text_prompt.depth:
            raise ValueError(
                f"couple needs one prompt depth on both towers; {backbone.name} gives text depth "
                f"{self.text_prompt.depth} and visual depth {visual_depth}: set --text-depth and --visual-depth"
            )
        return CoupledPromptTokens(
            self.text_prompt, backbone.vision_width, backbone.vision_prefix_len, config.gate, config.dropout
        )

    @classmethod
    def for_captions(cls, backbone: BackboneAdapter, config: PromptConfig, captions: Sequence[str]) -> "PromptedCLIP":
        """A model whose vocabulary offsets (if any) cover the tokens most used by these training captions."""
        return cls(backbone, config, cls.caption_vocabulary(backbone, config, captions))

    @staticmethod
    def caption_vocabulary(
        backbone: BackboneAdapter, config: PromptConfig, captions: Sequence[str]
    ) -> torch.Tensor | None:
        """The token ids `config`'s vocabulary offsets would cover for these captions (None: no vocabulary).

        Apart from `for_captions` so that several models of one database tokenize its captions once.
        """
        if not config.vocab:
            return None
        if not captions:
            raise ValueError("PromptConfig.vocab needs training captions to choose its tokens")
        ids = backbone.tokenize(list(captions), _caption_length(backbone, config))
        return frequent_tokens(ids, config.vocab)

    @staticmethod
    def _check_supported(backbone: BackboneAdapter, config: PromptConfig) -> None:
        checks = (
            ("textual", config.text_len, backbone.text_prompt_problem()),
            ("visual", config.visual_len, backbone.visual_prompt_problem()),
        )
        for kind, length, problem in checks:
            if length and problem:
                raise UnsupportedPromptError(
                    f"model {backbone.name} cannot take {kind} prompts: {problem}. "
                    f"Use --{'text' if kind == 'textual' else 'visual'}-len 0."
                )

    def train(self, mode: bool = True) -> "PromptedCLIP":
        """The backbone stays in eval mode whatever is trained: no dropout, frozen statistics."""
        super().train(mode)
        self.backbone.eval()
        return self

    def _phrase_embeddings(self, phrase: str) -> torch.Tensor:
        ids = self.backbone.tokenize([phrase], self.backbone.context_length)[0]
        start = self.backbone.text_prefix_len
        end = int((ids != 0).nonzero().max()) if start else int((ids != 0).sum())
        with torch.no_grad():
            return self.backbone.text_token_embeddings(ids[start:end].unsqueeze(0))[0].float()

    @property
    def text_context_length(self) -> int:
        return _caption_length(self.backbone, self.config)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.tokenize(texts, self.text_context_length)

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        ids = self.backbone.trim_text_padding(ids)
        x = self.backbone.text_token_embeddings(ids)
        if self.text_vocab is not None:
            x = self.text_vocab(ids, x)
        prompt = self.text_prompt
        if prompt is None:
            features = self.backbone.text_from_embeddings(x, ids)
        else:
            filler = ids.new_full((ids.shape[0], prompt.length), PROMPT_ID)
            long_ids = torch.cat([ids[:, : prompt.prefix], filler, ids[:, prompt.prefix :]], dim=1)
            if prompt.gate is not None and self._one_text_pass(x):
                features, unprompted = self._text_pair(x, ids, long_ids, prompt)
                return self._finish(prompt.blend(features, unprompted), normalize)
            features = self.backbone.text_from_embeddings(prompt.insert(x), long_ids, prompt.layer_hook())
            if prompt.gate is not None:
                # The gate blends towards the unprompted features: zero-shot, or with vocabulary offsets.
                with torch.no_grad() if self.text_vocab is None else contextlib.nullcontext():
                    unprompted = self.backbone.text_from_embeddings(x, ids)
                features = prompt.blend(features, unprompted)
        return self._finish(features, normalize)

    def text_zero_shot(self, ids: torch.Tensor) -> torch.Tensor:
        """The bare backbone's unit-length text features (no prompts, no vocabulary offsets)."""
        ids = self.backbone.trim_text_padding(ids)
        with torch.no_grad():
            return self._finish(self.backbone.text_from_embeddings(self.backbone.text_token_embeddings(ids), ids), True)

    def _one_text_pass(self, x: torch.Tensor) -> bool:
        """Whether `_text_pair` applies: inference, inert padding, and not bf16 on a CPU.

        On this project's CPU (no AMX) a bf16 batch of two hit a kernel 6x slower than two
        single passes (BENCHMARKS.md, Search), and no AMX machine was at hand to check.
        """
        cpu_bf16 = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        return not torch.is_grad_enabled() and not cpu_bf16 and self.backbone.text_padding_is_inert()

    def _text_pair(
        self, x: torch.Tensor, ids: torch.Tensor, long_ids: torch.Tensor, prompt: PromptTokens
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompted and unprompted text features from one batched pass of the tower.

        The unprompted rows are padded at the end to the prompted length; where padding is
        inert (causal attention, end-token pooling) that leaves their features unchanged, and
        the tower's weights are read once instead of twice, which is what a single query costs.
        """
        batch, extra = x.shape[0], long_ids.shape[1] - ids.shape[1]
        plain = F.pad(x, (0, 0, 0, extra))
        plain_ids = F.pad(ids, (0, extra), value=PROMPT_ID)
        hook = prompt.layer_hook()
        rows_hook = None if hook is None else (lambda i, h: torch.cat([hook(i, h[:batch]), h[batch:]]))
        both = self.backbone.text_from_embeddings(
            torch.cat([prompt.insert(x), plain]), torch.cat([long_ids, plain_ids]), rows_hook
        )
        return both[:batch], both[batch:]

    @staticmethod
    def _finish(features: torch.Tensor, normalize: bool) -> torch.Tensor:
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(
        self, images: torch.Tensor, normalize: bool = True, zero_shot: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`zero_shot`: these images' `image_zero_shot` features, if already known (training caches them)."""
        x = self.backbone.image_tokens(images)
        prompt = self.visual_prompt
        if prompt is None:
            features = self.backbone.image_from_tokens(x)
        else:
            features = self.backbone.image_from_tokens(prompt.insert(x), prompt.length, prompt.layer_hook())
            if prompt.gate is not None:
                if zero_shot is None:
                    with torch.no_grad():
                        zero_shot = self.backbone.image_from_tokens(x)
                features = prompt.blend(features, zero_shot.to(features.dtype))
        return self._finish(features, normalize)

    def image_zero_shot_is_fixed(self) -> bool:
        """Whether the gate's zero-shot image features stay the same all training (and so can be cached)."""
        gated = self.visual_prompt is not None and self.visual_prompt.gate is not None
        return gated and not any(p.requires_grad for p in self.backbone.image_parameters())

    def image_zero_shot(self, images: torch.Tensor) -> torch.Tensor:
        """The unprompted, unnormalised image features that a gated visual prompt blends towards."""
        with torch.no_grad():
            return self.backbone.image_from_tokens(self.backbone.image_tokens(images))

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.encode_text(self.tokenize(texts).to(device), normalize=normalize)

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the prompts (and the vocabulary's token ids), keyed by module path: what a prompt file holds."""
        return {
            name: p.detach()
            for name, p in [*self.named_parameters(), *self.named_buffers()]
            if name.startswith(_PROMPT_MODULES)
        }

    def load_prompt_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.prompt_state_dict())
        expected = set(own)
        if set(state) != expected:
            raise ValueError(f"prompt tensors {sorted(state)} do not match the config's {sorted(expected)}")
        with torch.no_grad():
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(
                        f"prompt tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}"
                    )
                own[name].copy_(tensor)

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


_PROMPT_MODULES = ("text_prompt.", "visual_prompt.", "text_vocab.")


def _caption_length(backbone: BackboneAdapter, config: PromptConfig) -> int:
    """Captions are cut to this many tokens so that caption + prompts fit the context."""
    return backbone.context_length - config.text_len


def _depth(requested: int, layers: int) -> int:
    """0 means every layer; more than the tower has means every layer too."""
    return layers if requested == 0 else min(requested, layers)
