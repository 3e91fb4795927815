"""Hugging Face transformers `CLIPModel` and `SiglipModel` seen through the token-level BackboneAdapter interface.

Each stage mirrors what the model's own `get_text_features` / `get_image_features` do, so that
with no prompts the features are the model's (tested to 1e-5):

    CLIP    text: tokens + positions -> causal layers -> final norm -> end token (first EOS, or the
                  largest id for configs older than transformers PR 24773) -> text_projection
            image: class token + patches + positions -> pre-norm -> layers -> post-norm of the
                  class token -> visual_projection
    SigLIP  text: tokens + positions -> bidirectional layers -> final norm -> last position -> head
            image: patches + positions -> layers -> post-norm -> attention-pooling head

Neither `get_text_features` call takes an attention mask here, as in the models' own examples:
CLIP's causal mask makes padding inert; SigLIP was trained on max-length padding, unmasked.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .base import BackboneAdapter, BlockView, BlockPrompt, LayerHook
from .blocks import _heads, _merge

# The end-token id configs carried before transformers PR 24773; the model then pools at the largest id.
_LEGACY_EOS_ID = 2

Tokenize = Callable[[Sequence[str], int], torch.Tensor]


class HFEncoderBlock(BlockView):
    """transformers' CLIPEncoderLayer and SiglipEncoderLayer: pre-norm, separate q, k, v projections."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.attn = layer.self_attn
        self.num_heads = self.attn.num_heads
        self.norm1, self.norm2 = layer.layer_norm1, layer.layer_norm2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.layer(x, mask)

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.attn
        return _heads(a.q_proj(h), self.num_heads), _heads(a.k_proj(h), self.num_heads), _heads(a.v_proj(h), self.num_heads)

    def attention_output(self, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.attn.out_proj(_merge(a))

    def mlp_branch(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer.mlp(h)

    @staticmethod
    def opens(layer: nn.Module) -> bool:
        from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer
        from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipEncoderLayer

        kinds = {(CLIPEncoderLayer, CLIPAttention), (SiglipEncoderLayer, SiglipAttention)}
        return (type(layer), type(getattr(layer, "self_attn", None))) in kinds


class HFAdapter(BackboneAdapter):
    """A transformers CLIPModel or SiglipModel (`model.config.model_type` "clip" or "siglip")."""

    def __init__(
        self,
        model: nn.Module,
        tokenize: Tokenize,
        text_prefix_len: int,
        transform: Callable,
        name: str,
        pretrained: str | None,
    ):
        """`tokenize(texts, length)`: ids [B, length], truncation keeping the end token; for CLIP,
        padding 0 after the end (inert under the causal mask), for SigLIP the tokenizer's own padding."""
        super().__init__()
        self.model = model
        self._tokenize = tokenize
        self._transform = transform
        self.name = name
        self.pretrained = pretrained
        self.family = model.config.model_type
        if self.family not in ("clip", "siglip"):
            raise ValueError(f"{name}: a {self.family!r} model; dbprompt opens transformers' CLIPModel and SiglipModel")
        text, vision = model.text_model, model.vision_model
        self.context_length = text.config.max_position_embeddings
        self.vocab_size = text.embeddings.token_embedding.num_embeddings
        # What tokenize writes after a caption's end: 0 for CLIP whatever its config says (see tokenize).
        pad = getattr(text.config, "pad_token_id", None) if self.family == "siglip" else 0
        self.text_pad_id = int(pad if pad is not None else 0)
        self.text_width = text.config.hidden_size
        self.text_num_layers = len(text.encoder.layers)
        self.text_prefix_len = text_prefix_len
        self.vision_width = vision.config.hidden_size
        self.vision_num_layers = len(vision.encoder.layers)
        self.vision_prefix_len = 1 if self.family == "clip" else 0  # CLIP's class token; SigLIP has none
        self.embed_dim = model.visual_projection.out_features if self.family == "clip" else self.vision_width
        size = vision.config.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self._eos_id = text.config.eos_token_id

    # --- capability -----------------------------------------------------------------
    def blocks(self, tower: str) -> list[BlockView] | None:
        layers = list(self._layers(tower))
        return [HFEncoderBlock(layer) for layer in layers] if all(HFEncoderBlock.opens(x) for x in layers) else None

    def num_heads(self, tower: str) -> int:
        return self._layers(tower)[0].self_attn.num_heads

    def block_forwards(self, tower: str) -> list[Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]]:
        return [HFEncoderBlock(layer).forward for layer in self._layers(tower)]

    def _layers(self, tower: str) -> nn.ModuleList:
        return (self.model.text_model if tower == "text" else self.model.vision_model).encoder.layers

    # --- text -----------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        return self._tokenize(list(texts), context_length)

    def text_padding_is_inert(self) -> bool:
        return self.family == "clip"

    def trim_text_padding(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.text_padding_is_inert() or not ids.numel():
            return ids  # SigLIP pools the last position: its padding is part of the caption's features
        return ids[:, : int((ids != 0).any(dim=0).nonzero().max()) + 1]

    def text_token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embeddings.token_embedding(ids)

    def text_from_embeddings(
        self,
        x: torch.Tensor,
        ids: torch.Tensor,
        hook: LayerHook | None = None,
        prompts: Sequence[BlockPrompt] = (),
    ) -> torch.Tensor:
        text = self.model.text_model
        length = x.shape[1]
        x = x + text.embeddings.position_embedding.weight[:length].to(x.dtype)
        mask = None
        if self.family == "clip":
            mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)[None, None]
        x = text.final_layer_norm(self.run_blocks("text", x, mask, hook, prompts))
        if self.family == "siglip":
            return text.head(x[:, -1])
        # Prompt positions hold PROMPT_ID (negative): never the end token, never the largest id.
        end = ids.argmax(dim=-1) if self._eos_id == _LEGACY_EOS_ID else (ids == self._eos_id).int().argmax(dim=-1)
        return self.model.text_projection(x[torch.arange(x.shape[0], device=x.device), end])

    # --- image ----------------------------------------------------------------------
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        x = vision.embeddings(images)
        return vision.pre_layrnorm(x) if self.family == "clip" else x

    def image_from_tokens(
        self,
        x: torch.Tensor,
        num_prompts: int = 0,
        hook: LayerHook | None = None,
        prompts: Sequence[BlockPrompt] = (),
    ) -> torch.Tensor:
        vision = self.model.vision_model
        x = self.run_blocks("image", x, None, hook, prompts)
        x = self.drop_prompt_tokens(x, num_prompts)
        if self.family == "clip":
            return self.model.visual_projection(vision.post_layernorm(x[:, 0]))
        return vision.head(vision.post_layernorm(x))

    # --- whole model ----------------------------------------------------------------
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=ids).pooler_output

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=images).pooler_output

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.reshape(())  # SigLIP keeps it as a 1-vector

    def image_transform(self) -> Callable:
        return self._transform

    @property
    def image_tower(self) -> nn.Module:
        return self.model.vision_model

