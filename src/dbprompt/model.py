"""A frozen backbone with one database's prompts: the model dbprompt trains, evaluates and serves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import PROMPT_ID, BackboneAdapter, LayerHook
from .compat import BackboneId, check_backbone
from .prompts.config import PromptConfig
from .prompts.learner import VOCABULARY_IDS, PromptLearner, caption_length, caption_vocabulary
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
        """A model with these prompt tensors (a prompt file's), checked name by name and shape by shape
        against a skeleton on the meta device first, so that a forged config allocates nothing."""
        ids = state.get(VOCABULARY_IDS)
        if config.vocab and ids is None:
            raise ValueError("the prompt config tunes a vocabulary but its token ids are missing")
        if ids is not None and ids.numel() and int(ids.max()) >= backbone.vocab_size:
            raise ValueError(f"vocabulary token id {int(ids.max())} is beyond {backbone.name}'s {backbone.vocab_size} tokens")
        with torch.device("meta"):
            skeleton = PromptLearner(backbone, config.replace(text_init=None), ids).state_dict()
        _check_state(state, skeleton)
        # A phrase only initialises the prompts, which the state replaces: no tokenizer is needed to load.
        model = cls(backbone, config.replace(text_init=None), ids)
        model.config = config
        model.prompts.load_state_dict(state)
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
        _check_state(state, self.prompts.state_dict())
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

    def image_tower_trainable(self) -> bool:
        """Whether anything inside the image tower trains. If not, what the tower computes for an image
        (`image_state`) never changes, so training computes it once per image and keeps it."""
        if any(m is not None for m in (self.prompts.visual, self.prompts.visual_norms, self.prompts.visual_adapters)):
            return True
        return any(p.requires_grad for p in self.backbone.image_tower.parameters())

    @property
    def image_state_width(self) -> int:
        """Numbers per image in `image_state`."""
        readout = self.prompts.readout
        if readout is None:
            return self.backbone.embed_dim
        return self.backbone.embed_dim + readout.layers * readout.width * (self._image_token_count() if readout.tokens else 1)

    def _image_token_count(self) -> int:
        """Tokens per image in the tower (prefix and patches): the patch embedding of one blank image tells."""
        with torch.no_grad():
            blank = torch.zeros(1, 3, *self.backbone.image_size, device=self.prompts.readout.up.device)
            return self.backbone.image_tokens(blank).shape[1]

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
        """One pass of the text tower: word offsets on the embeddings, prompts inside or among the layers."""
        if self.backbone.text_prompt_problem():  # it takes nothing (PromptLearner refuses): its own forward
            return _finish(self.backbone.encode_text(ids), normalize)
        ids = self.backbone.trim_text_padding(ids)
        x = self.backbone.text_token_embeddings(ids)
        if self.prompts.vocab is not None:
            x = self.prompts.vocab(ids, x)
        layers = self.prompts.layers("text")
        prompt = self.prompts.text
        if prompt is None or prompt.gated:
            return _finish(self.backbone.text_from_embeddings(x, ids, layers=layers), normalize)
        filler = ids.new_full((ids.shape[0], prompt.length), PROMPT_ID)
        long_ids = torch.cat([ids[:, : prompt.prefix], filler, ids[:, prompt.prefix :]], dim=1)
        features = self.backbone.text_from_embeddings(prompt.insert(x), long_ids, prompt.layer_hook(), layers)
        return _finish(features, normalize)

    def text_zero_shot(self, ids: torch.Tensor) -> torch.Tensor:
        """The bare backbone's unit-length text features (no prompts, no offsets)."""
        ids = self.backbone.trim_text_padding(ids)
        with torch.no_grad():
            return _finish(self.backbone.text_from_embeddings(self.backbone.text_token_embeddings(ids), ids), True)

    # --- images -------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """One pass of the image tower, prompts inside or among its layers, and the readout beside it."""
        features, taps = self._image_parts(images)
        readout = self.prompts.readout
        return _finish(features if readout is None else readout(features, taps), normalize)

    def image_state(self, images: torch.Tensor) -> torch.Tensor:
        """What the image tower computes: its output features [B, E], and with a readout, the tokens each
        block outputs, flattened after them (what training keeps per image when the tower is frozen)."""
        features, taps = self._image_parts(images)
        return torch.cat([features, *(t.flatten(1) for t in taps)], dim=1) if taps else features

    def image_from_state(self, state: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image features from `image_state`'s output: the readout's correction applied, if any."""
        readout = self.prompts.readout
        if readout is None:
            return _finish(state, normalize)
        split = self.backbone.embed_dim
        taps = state[:, split:].view(state.shape[0], readout.layers, -1, readout.width).unbind(1)
        return _finish(readout(state[:, :split], taps), normalize)

    def _image_parts(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The tower's output features and, with a readout, each block's output tokens."""
        if self.backbone.visual_prompt_problem():  # it takes nothing (PromptLearner refuses): its own forward
            return self.backbone.encode_image(images), []
        x = self.backbone.image_tokens(images)
        layers = self.prompts.layers("image")
        prompt = self.prompts.visual
        taps: list[torch.Tensor] = []
        tap = self._tap(taps) if self.prompts.readout is not None else None
        if prompt is None or prompt.gated:
            return self.backbone.image_from_tokens(x, hook=tap, layers=layers), taps
        hook = _chain(prompt.layer_hook(), tap)
        return self.backbone.image_from_tokens(prompt.insert(x), prompt.length, hook, layers), taps

    def _tap(self, taps: list[torch.Tensor]) -> LayerHook:
        """A layer hook keeping each block's output tokens (or only its summary: the class token, else the mean)."""
        prefix, tokens = self.backbone.vision_prefix_len, self.prompts.readout.tokens

        def tap(i: int, x: torch.Tensor) -> torch.Tensor:
            if i:
                taps.append(x if tokens else x[:, :1] if prefix else x.mean(dim=1, keepdim=True))
            return x

        return tap


def _chain(first: LayerHook | None, second: LayerHook | None) -> LayerHook | None:
    """Two layer hooks, one after the other (either may be None)."""
    if first is None or second is None:
        return first or second
    return lambda i, x: second(i, first(i, x))


def _check_state(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Prompt tensors must be exactly the config's: names, shapes and dtypes."""
    missing, unknown = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unknown:
        raise ValueError(
            "prompt tensors do not match the prompt config: "
            + "; ".join(part for part in (f"missing {missing}" if missing else "", f"unknown {unknown}" if unknown else "") if part)
        )
    for name, tensor in state.items():
        if own[name].shape != tensor.shape or own[name].dtype != tensor.dtype:
            raise ValueError(
                f"prompt tensor {name} is {tensor.dtype} {tuple(tensor.shape)}, expected {own[name].dtype} {tuple(own[name].shape)}"
            )


def _finish(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    return F.normalize(features, dim=-1) if normalize else features
