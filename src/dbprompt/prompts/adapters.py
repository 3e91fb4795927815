"""Bottleneck adapters beside each block's MLP (AdaptFormer): capacity inside the frozen tower, from zero.

Where the images differ from what the backbone saw (texture, noise, blur), prompts only re-weigh
what the tower already computes; a small learned map per layer can compute something new. The
up-projection starts at zero, so the tower starts exactly at the backbone's output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import BlockPrompt, BlockView


class BlockAdapters(nn.Module, BlockPrompt):
    """One down [rank, width] / up [width, rank] pair per layer, on the MLP's normed input."""

    def __init__(self, layers: int, width: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(layers, rank, width) / math.sqrt(width))
        self.up = nn.Parameter(torch.zeros(layers, width, rank))

    def mlp(self, layer: int, block: BlockView, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + F.linear(F.gelu(F.linear(h, self.down[layer].to(h.dtype))), self.up[layer].to(h.dtype))
