"""Views of open_clip's and timm's transformer blocks, in the parts prompts act on (see BlockView)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from .base import BlockView


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, L, D] -> [B, H, L, D / H]."""
    b, length, d = x.shape
    return x.view(b, length, num_heads, d // num_heads).transpose(1, 2)


def _merge(a: torch.Tensor) -> torch.Tensor:
    """[B, H, L, hd] -> [B, L, H * hd]."""
    b, h, length, hd = a.shape
    return a.transpose(1, 2).reshape(b, length, h * hd)


class OpenClipBlock(BlockView):
    """open_clip's ResidualAttentionBlock: nn.MultiheadAttention with one packed in-projection."""

    def __init__(self, block: ResidualAttentionBlock):
        self.block = block
        self.num_heads = block.attn.num_heads
        self.norm1, self.norm2 = block.ln_1, block.ln_2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.block(x, attn_mask=mask)

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = self.block.attn
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        return _heads(q, self.num_heads), _heads(k, self.num_heads), _heads(v, self.num_heads)

    def attention_output(self, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.block.ls_1(self.block.attn.out_proj(_merge(a)))

    def mlp_branch(self, h: torch.Tensor) -> torch.Tensor:
        return self.block.ls_2(self.block.mlp(h))

    @staticmethod
    def opens(block: nn.Module) -> bool:
        attn = getattr(block, "attn", None)
        return (
            type(block) is ResidualAttentionBlock
            and isinstance(attn, nn.MultiheadAttention)
            and attn.batch_first
            and attn._qkv_same_embed_dim
            and not hasattr(block, "ln_1_kv")
        )


class TimmBlock(BlockView):
    """timm's ViT Block (the SigLIP image towers): a qkv Linear, optional q/k norms and output gate."""

    def __init__(self, block: nn.Module):
        self.block = block
        self.attn = block.attn
        self.num_heads = self.attn.num_heads
        self.norm1, self.norm2 = block.norm1, block.norm2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.block(x, attn_mask=mask) if mask is not None else self.block(x)

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, length, _ = h.shape
        attn = self.attn
        q, k, v = attn.qkv(h).reshape(b, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    def attention_output(self, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        x = attn.norm(_merge(a))
        if getattr(attn, "gate", None) is not None:
            x = x * attn.gate(h).sigmoid()
        return self.block.ls1(attn.proj(x))

    def mlp_branch(self, h: torch.Tensor) -> torch.Tensor:
        return self.block.ls2(self.block.mlp(h))

    @staticmethod
    def opens(block: nn.Module) -> bool:
        from timm.models.vision_transformer import Attention, Block

        return type(block) is Block and type(block.attn) is Attention
