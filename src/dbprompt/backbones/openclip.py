"""open_clip models seen through the token-level BackboneAdapter interface.

Covers both model layouts (`CLIP`, whose text tower is hoisted onto the model, and
`CustomTextCLIP` with `.text`), open_clip's own ViT (token or average pooling, with or
without attentional pooling) and timm ViT towers with prefix tokens (the SigLIP family).
"""

from __future__ import annotations

import functools

from typing import Callable, Sequence

import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from . import shim
from .base import BackboneAdapter, BlockView, BlockPrompt, LayerHook
from .blocks import OpenClipBlock, TimmBlock

_text_pool = shim.text_pool()


def _timm_vit_class() -> type | None:
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:
        return None
    return TimmViT


class _TextView:
    """Uniform access to the text tower's parts for both open_clip layouts."""

    def __init__(self, model: nn.Module):
        tower = getattr(model, "text", None)
        self.tower = tower
        src = tower if tower is not None else model
        self.problem: str | None = None
        if tower is not None and not isinstance(tower, TextTransformer):
            self.problem = f"text tower {type(tower).__name__} does not expose its token embeddings"
            return
        self.token_embedding: nn.Embedding = src.token_embedding
        self.positional_embedding: nn.Parameter = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.projection = src.text_projection
        self.attn_mask = src.attn_mask
        self.pool_type = src.pool_type if tower is not None else src.text_pool_type
        self.eos_id = getattr(src, "eos_id" if tower is not None else "text_eos_id", None)
        self.pad_id = getattr(src, "pad_id", 0)
        if not self.transformer.batch_first:
            self.problem = "text transformer is not batch-first"
        elif tower is not None and tower.cls_emb is not None:
            self.problem = "text tower appends a class token (CoCa), which prompts would displace"
        elif tower is not None and tower.use_pad_mask:
            self.problem = "text tower masks padding, which this adapter does not rebuild for prompts"
        elif self.pool_type not in ("argmax", "eos", "last", "first"):
            self.problem = f"text pooling '{self.pool_type}' has no single output token"


class OpenClipAdapter(BackboneAdapter):
    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[], Callable],
        preprocess: Callable,
        name: str,
        pretrained: str | None,
    ):
        super().__init__()
        self.model = model
        self._make_tokenizer = tokenizer
        self._tokenizer: Callable | None = None
        self._preprocess = preprocess
        self.name = name
        self.pretrained = pretrained
        self._text = _TextView(model)
        self.context_length = int(model.context_length)
        if self._text.problem is None:
            self.vocab_size = self._text.token_embedding.num_embeddings
            self.text_pad_id = int(self._text.pad_id)
            self.text_width = self._text.token_embedding.embedding_dim
            self.text_num_layers = len(self._text.transformer.resblocks)
        visual = model.visual
        size = visual.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self._vision_kind = self._classify_vision(visual)
        if self._vision_kind == "openclip":
            self.vision_width = visual.class_embedding.shape[-1]
            self.vision_num_layers = len(visual.transformer.resblocks)
            self.vision_prefix_len = 1
        elif self._vision_kind == "timm":
            trunk = visual.trunk
            self.vision_width = trunk.embed_dim
            self.vision_num_layers = len(trunk.blocks)
            self.vision_prefix_len = trunk.num_prefix_tokens
        self.embed_dim = self._image_embed_dim(visual)

    @staticmethod
    def _image_embed_dim(visual: nn.Module) -> int:
        """open_clip's ViT and ResNet towers record their output width; a timm tower's is its head's."""
        if hasattr(visual, "output_dim"):
            return int(visual.output_dim)
        heads = [m.out_features for m in visual.head.modules() if isinstance(m, nn.Linear)]
        return heads[-1] if heads else visual.trunk.num_features

    @staticmethod
    def _classify_vision(visual: nn.Module) -> str | None:
        if isinstance(visual, VisionTransformer):
            return "openclip" if visual.transformer.batch_first else None
        timm_vit = _timm_vit_class()
        if isinstance(visual, TimmModel) and timm_vit is not None and type(visual.trunk) is timm_vit:
            if getattr(visual.trunk, "dynamic_img_size", False):
                return None
            return "timm"
        return None

    # --- capability -----------------------------------------------------------------
    def text_prompt_problem(self) -> str | None:
        return self._text.problem

    def _raw_blocks(self, tower: str) -> list[nn.Module]:
        if tower == "text":
            return [] if self._text.problem else list(self._text.transformer.resblocks)
        if self._vision_kind == "openclip":
            return list(self.model.visual.transformer.resblocks)
        if self._vision_kind == "timm":
            return list(self.model.visual.trunk.blocks)
        return []

    def block_forwards(self, tower: str) -> list[Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]]:
        return [functools.partial(_own_forward, b) for b in self._raw_blocks(tower)]

    def blocks(self, tower: str) -> list[BlockView] | None:
        raw = self._raw_blocks(tower)
        for kind in (OpenClipBlock, TimmBlock):
            if raw and all(kind.opens(b) for b in raw):
                return [kind(b) for b in raw]
        return None

    def num_heads(self, tower: str) -> int:
        views = self.blocks(tower)
        if views is None:
            raise ValueError(f"{self.name}: the {tower} tower's blocks are not open to prompts")
        return views[0].num_heads

    def visual_prompt_problem(self) -> str | None:
        if self._vision_kind is not None:
            return None
        visual = self.model.visual
        inner = getattr(visual, "trunk", visual)
        return f"image tower {type(inner).__name__} is not a ViT that takes tokens"

    # --- text -----------------------------------------------------------------------
    @property
    def tokenizer(self) -> Callable:
        """Built on first use: some towers' tokenizers come from a hub, which tests never reach."""
        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        return self._tokenizer

    @property
    def text_prefix_len(self) -> int:
        return 1 if getattr(self.tokenizer, "sot_token_id", None) is not None else 0

    def tokenize(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        return self.tokenizer(list(texts), context_length=context_length)

    def text_padding_is_inert(self) -> bool:
        t = self._text
        return not t.problem and t.attn_mask is not None and t.pool_type in ("argmax", "eos")

    def trim_text_padding(self, ids: torch.Tensor) -> torch.Tensor:
        t = self._text
        if not self.text_padding_is_inert():
            return ids  # bidirectional attention or last-token pooling: padding matters
        used = int((ids != t.pad_id).any(dim=0).nonzero().max()) + 1 if ids.numel() else ids.shape[1]
        return ids[:, :used]

    def text_token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        cast = self._text.transformer.get_cast_dtype()
        return self._text.token_embedding(ids).to(cast)

    def text_from_embeddings(
        self,
        x: torch.Tensor,
        ids: torch.Tensor,
        hook: LayerHook | None = None,
        prompts: Sequence[BlockPrompt] = (),
    ) -> torch.Tensor:
        t = self._text
        length = x.shape[1]
        x = x + t.positional_embedding[:length].to(x.dtype)
        mask = t.attn_mask[:length, :length] if t.attn_mask is not None else None
        x = self.run_blocks("text", x, mask, hook, prompts)
        x = t.ln_final(x)
        # The placeholder ids of prompt positions never match an end token, so the
        # pooled position shifts with the prompts.
        pooled = _text_pool(x, ids, t.pool_type, t.eos_id)
        if t.projection is None:
            return pooled
        if isinstance(t.projection, nn.Linear):
            return t.projection(pooled)
        return pooled @ t.projection

    # --- image ----------------------------------------------------------------------
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        if self._vision_kind == "openclip":
            return shim.openclip_image_tokens(visual, images)
        return shim.timm_image_tokens(visual.trunk, images)

    def image_from_tokens(
        self,
        x: torch.Tensor,
        num_prompts: int = 0,
        hook: LayerHook | None = None,
        prompts: Sequence[BlockPrompt] = (),
    ) -> torch.Tensor:
        visual = self.model.visual
        if self._vision_kind == "openclip":
            x = self.run_blocks("image", x, None, hook, prompts)
            x = self.drop_prompt_tokens(x, num_prompts)
            pooled = shim.openclip_image_pool(visual, x)
            return pooled @ visual.proj if visual.proj is not None else pooled
        trunk = visual.trunk
        x = self.run_blocks("image", x, None, hook, prompts)
        x = trunk.norm(x)
        x = self.drop_prompt_tokens(x, num_prompts)
        return visual.head(trunk.forward_head(x))

    # --- whole model ----------------------------------------------------------------
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def image_transform(self) -> Callable:
        return self._preprocess

    @property
    def image_tower(self) -> nn.Module:
        return self.model.visual


def _own_forward(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A block's own forward: open_clip's take a mask, timm's take none here (no masks on images)."""
    return block(x, attn_mask=mask) if mask is not None else block(x)
