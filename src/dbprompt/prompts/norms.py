"""Offsets to the affine of every LayerNorm in a tower's blocks: the image-side counterpart of word offsets.

Prompts can only add attention-weighted vectors to what the frozen tower computes; where the
images themselves differ (texture, noise, blur), the tower must weigh its channels differently
at every layer. A zero-initialised offset to each norm's scale and shift does that (as LayerNorm
tuning and SSF do), starts exactly at the backbone's output, and costs 4 x width numbers a layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.base import LayerPrompt


class NormOffsets(nn.Module):
    """[layers, 2 norms, weight and bias, width] offsets, all zero at the start."""

    def __init__(self, layers: int, width: int):
        super().__init__()
        self.offsets = nn.Parameter(torch.zeros(layers, 2, 2, width))

    def apply(self, prompts: list[LayerPrompt | None]) -> list[LayerPrompt | None]:
        """Each layer's LayerPrompt with its norm offsets set (layers without prompts get one)."""
        out = list(prompts) + [None] * (len(self.offsets) - len(prompts))
        for i, o in enumerate(self.offsets):
            p = out[i] or LayerPrompt()
            p.norm1, p.norm2 = (o[0, 0], o[0, 1]), (o[1, 0], o[1, 1])
            out[i] = p
        return out
