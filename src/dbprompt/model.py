"""A frozen backbone with one database's prompts: the model dbprompt trains, evaluates and serves."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import PROMPT_ID, BackboneAdapter
from .compat import BackboneId, check_backbone, vocabulary_size
from .prompts.config import PromptConfig
from .prompts.learner import VOCABULARY_IDS, PromptLearner, caption_length, caption_vocabulary
from .prompts.tokens import PromptTokens
from .storage import PromptFileError, read_prompt_file, write_prompt_file


class PromptedCLIP(nn.Module):
    """Encodes text and images through the backbone's token stages with the prompts spliced in.

    The staged path is used even without prompts, so zero-shot and prompted numbers always
    come from the same code. Every learnable vector lives in `self.prompts`.
    """

    def __init__(self, backbone: BackboneAdapter, config: PromptConfig, vocabulary: torch.Tensor | None = None):
        """`vocabulary`: the token ids that get offsets when `config.vocab` is on (see `for_captions`)."""
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.prompts = PromptLearner(backbone, config, vocabulary)

    # --- building, loading and saving -------------------------------------------------------------
    @classmethod
    def for_captions(cls, backbone: BackboneAdapter, config: PromptConfig, captions: Sequence[str]) -> "PromptedCLIP":
        """A model whose vocabulary offsets (if any) cover the tokens most used by these training captions."""
        return cls(backbone, config, caption_vocabulary(backbone, config, captions))

    @classmethod
    def from_state(cls, backbone: BackboneAdapter, config: PromptConfig, state: dict[str, torch.Tensor]) -> "PromptedCLIP":
        """A model with these prompt tensors (a prompt file's), checked name by name and shape by shape."""
        if config.vocab and VOCABULARY_IDS not in state:
            raise ValueError("the prompt config tunes a vocabulary but its token ids are missing")
        model = cls(backbone, config, state.get(VOCABULARY_IDS))
        model.load_prompt_state_dict(state)
        return model

    @classmethod
    def from_prompt_file(
        cls, path: str | os.PathLike, backbone: BackboneAdapter | None = None, *, device: str = "cpu"
    ) -> "PromptedCLIP":
        """The model a prompt file was trained for, on `backbone` (else the one the file records, loaded
        only from local weights: see `backbones.recorded`).

        Any other backbone than the one the file records is refused, and so are token ids it does not have.
        """
        pf = read_prompt_file(path)
        if backbone is None:
            from .backbones.recorded import load_recorded_backbone

            backbone = load_recorded_backbone(pf.backbone, pf.pretrained, device=device, source=str(pf.path))
        check_backbone(str(pf.path), pf.backbone_id, backbone)
        ids, size = pf.tensors.get(VOCABULARY_IDS), vocabulary_size(backbone)
        if ids is not None and size is not None and int(ids.max()) >= size:
            raise PromptFileError(f"{pf.path}: vocabulary token id {int(ids.max())} is beyond {backbone.name}'s {size} tokens")
        try:
            model = cls.from_state(backbone, pf.config, pf.tensors)
        except ValueError as exc:
            raise PromptFileError(f"{pf.path}: {exc}") from None
        return model.to(device).eval()

    def save_prompt_file(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write the prompts as a safetensors prompt file; `extra` is any JSON-able training summary."""
        return write_prompt_file(path, self.prompt_state_dict(), self.config, BackboneId.of(self.backbone), extra)

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the prompts (and the vocabulary's token ids): what a prompt file holds."""
        return {k: v.detach() for k, v in self.prompts.state_dict().items()}

    def load_prompt_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.prompts.state_dict()
        if set(state) != set(own):
            raise ValueError(f"prompt tensors {sorted(state)} do not match the config's {sorted(own)}")
        for name, tensor in state.items():
            if own[name].shape != tensor.shape:
                raise ValueError(f"prompt tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}")
        self.prompts.load_state_dict(state)

    # --- training support ---------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "PromptedCLIP":
        """The backbone stays in eval mode whatever is trained: no dropout, frozen statistics."""
        super().train(mode)
        self.backbone.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this model) that training must not decay."""
        return {f"prompts.{n}" for n in self.prompts.no_weight_decay()}

    def image_side_trainable(self) -> bool:
        """Whether image features can change in training (if not, they are computed once and cached)."""
        return self.prompts.visual is not None or any(p.requires_grad for p in self.backbone.image_tower.parameters())

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # --- text ---------------------------------------------------------------------------------------
    @property
    def text_context_length(self) -> int:
        return caption_length(self.backbone, self.config)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.tokenize(texts, self.text_context_length)

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.encode_text(self.tokenize(texts).to(device), normalize=normalize)

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        ids = self.backbone.trim_text_padding(ids)
        x = self.backbone.text_token_embeddings(ids)
        if self.prompts.vocab is not None:
            x = self.prompts.vocab(ids, x)
        prompt = self.prompts.text
        if prompt is None:
            features = self.backbone.text_from_embeddings(x, ids)
        else:
            filler = ids.new_full((ids.shape[0], prompt.length), PROMPT_ID)
            long_ids = torch.cat([ids[:, : prompt.prefix], filler, ids[:, prompt.prefix :]], dim=1)
            if prompt.gate is not None and self._one_text_pass(x):
                features, unprompted = self._text_pair(x, ids, long_ids, prompt)
                return _finish(prompt.blend(features, unprompted), normalize)
            features = self.backbone.text_from_embeddings(prompt.insert(x), long_ids, prompt.layer_hook())
            if prompt.gate is not None:
                # The gate blends towards the unprompted features: zero-shot, or with vocabulary offsets.
                with torch.no_grad() if self.prompts.vocab is None else contextlib.nullcontext():
                    unprompted = self.backbone.text_from_embeddings(x, ids)
                features = prompt.blend(features, unprompted)
        return _finish(features, normalize)

    def text_zero_shot(self, ids: torch.Tensor) -> torch.Tensor:
        """The bare backbone's unit-length text features (no prompts, no vocabulary offsets)."""
        ids = self.backbone.trim_text_padding(ids)
        with torch.no_grad():
            return _finish(self.backbone.text_from_embeddings(self.backbone.text_token_embeddings(ids), ids), True)

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
        inert (causal attention, end-token pooling) that leaves their features unchanged.
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

    # --- images -------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.backbone.image_tokens(images)
        prompt = self.prompts.visual
        if prompt is None:
            features = self.backbone.image_from_tokens(x)
        else:
            features = self.backbone.image_from_tokens(prompt.insert(x), prompt.length, prompt.layer_hook())
            if prompt.gate is not None:
                with torch.no_grad():
                    zero_shot = self.backbone.image_from_tokens(x)
                features = prompt.blend(features, zero_shot.to(features.dtype))
        return _finish(features, normalize)


def _finish(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    return F.normalize(features, dim=-1) if normalize else features
