"""Learnable prompt tokens: inserted once after a prefix, optionally refreshed layer by layer."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.base import LayerHook


class PromptTokens(nn.Module):
    """`length` learnable tokens placed right after the first `prefix` positions.

    With depth d > 1 (deep prompting) the prompt positions are overwritten with a fresh
    set before each of layers 1..d-1; layer 0 sees the set inserted at the input.
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
    ):
        super().__init__()
        self.length = length
        self.prefix = prefix
        self.depth = depth
        self.tokens = nn.Parameter(torch.randn(depth, length, width) * std)
        self.gate = nn.Parameter(torch.zeros(())) if gate else None
        if init is not None:
            k = min(length, init.shape[0])
            with torch.no_grad():
                self.tokens[0, :k] = init[:k]

    def _splice(self, x: torch.Tensor, tokens: torch.Tensor, replace: int) -> torch.Tensor:
        batch = x.shape[0]
        prompts = tokens.to(x.dtype).unsqueeze(0).expand(batch, -1, -1)
        return torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix + replace :]], dim=1)

    def insert(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, L + length, D]."""
        return self._splice(x, self.tokens[0], replace=0)

    def blend(self, prompted: torch.Tensor, zero_shot: torch.Tensor) -> torch.Tensor:
        """Gated residual between the backbone's own features and the prompted ones."""
        return zero_shot + self.gate.to(prompted.dtype) * (prompted - zero_shot)

    def layer_hook(self) -> LayerHook | None:
        if self.depth == 1:
            return None

        def hook(layer: int, x: torch.Tensor) -> torch.Tensor:
            if 0 < layer < self.depth:
                return self._splice(x, self.tokens[layer], replace=self.length)
            return x

        return hook
