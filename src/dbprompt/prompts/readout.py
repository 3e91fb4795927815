"""A readout beside the frozen image tower: what adapts the images without backpropagating through it.

Adapters inside the tower move image features where the images differ, but every step must then
backpropagate through all its layers and keep their activations. The readout instead reads what
the frozen tower already computes at every layer (every block's output tokens, or with `tokens` off
only their summary: the class token, or the mean token of towers without one) and adds a small
learned correction to the tower's output feature, as a side network does (LST, CLIP-Adapter over
several depths). The tower itself runs as the backbone
does, once, and nothing it computes needs a gradient, so a training step costs its forward alone
and its states can be kept across epochs. The up-projection starts at zero: the output starts
exactly at the backbone's.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ImageReadout(nn.Module):
    """A side network on the frozen tower's tokens, added to its output feature f:

        z = gelu(sum_i down_i norm(x_i) + down_out norm(f))    per token, [B, N, rank]
        f' = f + up(sum_n softmax_n(z q) z_n)                  a learned attention pooling

    `x_i` [B, N, width]: the tokens each image block outputs; `f` [B, embed]: the tower's own output feature. With
    `tokens` off only the summary token of each layer is read (N = 1).
    """

    def __init__(self, layers: int, width: int, embed_dim: int, rank: int, tokens: bool = True):
        super().__init__()
        self.down = nn.Parameter(torch.randn(layers, rank, width) / math.sqrt(layers * width))
        self.down_out = nn.Parameter(torch.randn(rank, embed_dim) / math.sqrt(embed_dim))
        self.query = nn.Parameter(torch.zeros(rank))  # zero: mean pooling at the start
        self.up = nn.Parameter(torch.zeros(embed_dim, rank))
        self.layers, self.width, self.tokens = layers, width, tokens

    def forward(self, features: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """`taps`: one [B, N, width] per layer (each projected apart: no copy of them all)."""
        z = F.linear(F.layer_norm(features, (features.shape[-1],)), self.down_out.to(features.dtype))[:, None]
        for down, tap in zip(self.down, taps, strict=True):
            z = z + F.linear(F.layer_norm(tap, (self.width,)), down.to(tap.dtype))
        z = F.gelu(z)
        weights = torch.softmax(z @ self.query.to(z.dtype), dim=1)
        pooled = (weights[..., None] * z).sum(dim=1)
        return features + F.linear(pooled, self.up.to(pooled.dtype))
