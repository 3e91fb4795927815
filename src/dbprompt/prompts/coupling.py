"""MaPLe-style coupling: visual prompts computed from the textual ones by a learned linear map.

MaPLe (Khattak et al., CVPR 2023) found that prompts learned in one modality alone can pull
the two towers' features apart; deriving the visual prompts from the textual ones makes
every update move both sides together. One map is shared by all layers, which keeps the
trainable count near that of independent prompts (MaPLe has one map per layer).
"""

from __future__ import annotations

import torch
from torch import nn

from .tokens import PromptTokens


class CoupledPromptTokens(PromptTokens):
    """Visual prompt tokens = map(textual prompt tokens), layer by layer; same length and depth."""

    def __init__(self, source: PromptTokens, width: int, prefix: int, heads: int = 0, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.length = source.length
        self.prefix = prefix
        self.depth = source.depth
        self.dropout = dropout
        # Held outside the module tree: the textual prompt owns (and saves) its tokens.
        self._source = (source,)
        self.map = nn.Linear(source.tokens.shape[-1], width)
        self.gate = nn.Parameter(torch.zeros(self.depth, heads)) if heads else None

    def vectors(self) -> torch.Tensor:
        return self.map(self._source[0].tokens)
