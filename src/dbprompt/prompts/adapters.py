"""Bottleneck adapters beside each block's MLP (AdaptFormer): capacity inside the frozen tower, from zero.

Where the images differ from what the backbone saw (texture, noise, blur), prompts and norm offsets
only re-weigh what the tower already computes; a small learned map per layer can compute something
new. The up-projection starts at zero, so the tower starts exactly at the backbone's output.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..backbones.base import LayerPrompt


class BlockAdapters(nn.Module):
    """One down [rank, width] / up [width, rank] pair per layer."""

    def __init__(self, layers: int, width: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(layers, rank, width) / math.sqrt(width))
        self.up = nn.Parameter(torch.zeros(layers, width, rank))

    def apply(self, prompts: list[LayerPrompt | None]) -> list[LayerPrompt | None]:
        out = list(prompts) + [None] * (len(self.down) - len(prompts))
        for i in range(len(self.down)):
            p = out[i] or LayerPrompt()
            p.adapter = (self.down[i], self.up[i])
            out[i] = p
        return out
