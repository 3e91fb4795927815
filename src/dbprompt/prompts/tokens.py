"""Learnable prompt tokens: inserted once after a prefix, optionally refreshed layer by layer."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.base import LayerHook


def drop_vectors(vectors: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout of whole vectors (rows of the last dimension): a dropped prompt token or word
    offset is zero for that step, the rest are scaled by 1 / (1 - p)."""
    if not training or p == 0:
        return vectors
    keep = torch.rand(vectors.shape[:-1] + (1,), device=vectors.device) >= p
    return vectors * keep / (1 - p)


class PromptTokens(nn.Module):
    """`length` learnable tokens placed right after the first `prefix` positions.

    With depth d > 1 (deep prompting) the prompt positions are overwritten with a fresh
    set before each of layers 1..d-1; layer 0 sees the set inserted at the input.
    With `dropout` p > 0, each prompt vector is dropped with probability p in training.
    """

    def __init__(
        self,
        length: int,
        width: int,
        prefix: int,
        depth: int = 1,
        std: float = 0.02,
        init: torch.Tensor | None = None,
        gate: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.length = length
        self.prefix = prefix
        self.depth = depth
        self.dropout = dropout
        self.tokens = nn.Parameter(torch.randn(depth, length, width) * std)
        self.gate = nn.Parameter(torch.zeros(())) if gate else None
        if init is not None:
            k = min(length, init.shape[0])
            with torch.no_grad():
                self.tokens[0, :k] = init[:k]

    def vectors(self) -> torch.Tensor:
        """The [depth, length, width] prompt vectors in use (a coupled prompt derives its own)."""
        return self.tokens

    def _splice(self, x: torch.Tensor, tokens: torch.Tensor, replace: int) -> torch.Tensor:
        batch = x.shape[0]
        prompts = drop_vectors(tokens, self.dropout, self.training).to(x.dtype).unsqueeze(0).expand(batch, -1, -1)
        return torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix + replace :]], dim=1)

    def insert(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, L + length, D]."""
        return self._splice(x, self.vectors()[0], replace=0)

    def blend(self, prompted: torch.Tensor, zero_shot: torch.Tensor) -> torch.Tensor:
        """Gated residual between the backbone's own features and the prompted ones."""
        return zero_shot + self.gate.to(prompted.dtype) * (prompted - zero_shot)

    def layer_hook(self) -> LayerHook | None:
        if self.depth == 1:
            return None

        vectors = self.vectors()

        def hook(layer: int, x: torch.Tensor) -> torch.Tensor:
            if 0 < layer < self.depth:
                return self._splice(x, vectors[layer], replace=self.length)
            return x

        return hook
