"""The token-level interface a frozen dual encoder offers to prompts.

Prompt modules only ever see this interface: they get token sequences, may insert
tokens, and may rewrite prompt positions between layers through a hook. Everything
that knows a backbone's internals lives in the adapter that implements it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch
from torch import nn

# Called before transformer layer `i` with the current token sequence; returns it (possibly changed).
LayerHook = Callable[[int, torch.Tensor], torch.Tensor]

# Stands in for prompt positions in the token-id sequence used for pooling and masks.
# Negative, so it never equals a real end, padding or start id and never wins an argmax.
PROMPT_ID = -1

_FINGERPRINT_SAMPLES = 4096


class UnsupportedPromptError(ValueError):
    """A prompt kind was asked of a tower that cannot take tokens."""


class BackboneAdapter(nn.Module, ABC):
    """A frozen CLIP-like model seen as token stages.

    Text:  ids -> token embeddings -> [insert] -> +positions -> layers(hook) -> norm -> pool -> projection
    Image: pixels -> patch + prefix tokens + positions (+ pre-norm) -> [insert] -> layers(hook)
           -> drop prompt positions -> pool -> projection
    """

    name: str
    pretrained: str | None
    context_length: int
    text_width: int
    text_num_layers: int
    # Token positions before the textual insertion point (1 when the tokenizer emits a start token).
    text_prefix_len: int
    vision_width: int
    vision_num_layers: int
    # Class / register tokens before the patch tokens; visual prompts go right after them.
    vision_prefix_len: int
    image_size: tuple[int, int]

    # --- capability -----------------------------------------------------------------
    def text_prompt_problem(self) -> str | None:
        """Why textual prompts cannot be used on this backbone, or None when they can."""
        return None

    def visual_prompt_problem(self) -> str | None:
        """Why visual prompts cannot be used on this backbone, or None when they can."""
        return None

    # --- text -----------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        """Token ids [B, context_length]; truncation keeps the end token."""

    def text_padding_is_inert(self) -> bool:
        """True when tokens after a caption's end cannot change its features (causal attention, end-token pooling)."""
        return False

    def trim_text_padding(self, ids: torch.Tensor) -> torch.Tensor:
        """Drop trailing all-padding columns when they cannot change the result.

        Captions are much shorter than the context, so this cuts text cost severalfold.
        """
        return ids

    @abstractmethod
    def text_token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, D] without positions."""

    @abstractmethod
    def text_from_embeddings(
        self, x: torch.Tensor, ids: torch.Tensor, hook: LayerHook | None = None
    ) -> torch.Tensor:
        """Features [B, E] from a full-length embedding sequence.

        `ids` has the same length as `x`; prompt positions hold PROMPT_ID so pooling
        at the end token and padding masks land on the right positions.
        """

    # --- image ----------------------------------------------------------------------
    @abstractmethod
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Input token sequence [B, prefix + patches, D], positions added, pre-norm applied."""

    @abstractmethod
    def image_from_tokens(
        self, x: torch.Tensor, num_prompts: int = 0, hook: LayerHook | None = None
    ) -> torch.Tensor:
        """Features [B, E]; the `num_prompts` positions after the prefix are dropped before pooling."""

    # --- whole model ----------------------------------------------------------------
    @abstractmethod
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """The backbone's own, unprompted text features."""

    @abstractmethod
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's own, unprompted image features."""

    @property
    @abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """Log of the contrastive temperature's inverse, as trained with the backbone."""

    @abstractmethod
    def image_transform(self) -> Callable:
        """PIL image -> tensor, as the backbone was evaluated (no augmentation)."""

    def fingerprint(self) -> str:
        """A short digest of the weights, so prompts are never applied to another backbone.

        Hashes names, shapes and an evenly strided sample of every tensor: it tells
        checkpoints apart in well under a second even for large models.
        """
        if getattr(self, "_fingerprint", None) is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.state_dict().items()):
                flat = tensor.detach().reshape(-1)
                stride = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
                sample = flat[::stride].to(torch.float32).cpu().numpy()
                digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
                digest.update(sample.tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    @property
    @abstractmethod
    def image_tower(self) -> nn.Module:
        """The module holding every weight of the image side (to know whether image features can be cached)."""
