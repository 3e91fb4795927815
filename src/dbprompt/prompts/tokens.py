"""Gated deep prompts: learnable keys and values in every layer's attention, starting exactly at zero-shot.

In deep prompting (VPT-deep, MaPLe) a layer's fresh prompt tokens are replaced at the next layer,
so their queries, attention output and MLP never mattered: only the keys and values they offer
the real tokens do. These prompts are those keys and values alone, through the layer's own norm
and projections, attended to apart and scaled per head by a gate that starts at 0
(LLaMA-Adapter's zero-init attention): the tower begins exactly at the backbone's output, in one
pass over sequences of the backbone's own length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import BlockPrompt, BlockView


class GatedPrompts(nn.Module, BlockPrompt):
    """`length` learnable tokens [depth, length, width] for each of the first `depth` layers, one gate per
    layer and head [depth, heads]."""

    def __init__(self, length: int, width: int, depth: int, heads: int, std: float = 0.02):
        super().__init__()
        self.length, self.depth = length, depth
        self.tokens = nn.Parameter(torch.randn(depth, length, width) * std)
        self.gate = nn.Parameter(torch.zeros(depth, heads))

    def acts_at(self, layer: int) -> bool:
        return layer < self.depth

    def attention(self, layer: int, block: BlockView, q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """a + gate * attention of the queries to this layer's prompts (one set of keys for the batch)."""
        if layer >= self.depth:
            return a
        _, pk, pv = block.qkv(block.norm1(self.tokens[layer].to(q.dtype)[None]))
        batch = (q.shape[0], -1, -1, -1)
        a_p = F.scaled_dot_product_attention(q, pk.expand(batch), pv.expand(batch))
        return a + self.gate[layer].to(a.dtype).view(1, -1, 1, 1) * a_p
