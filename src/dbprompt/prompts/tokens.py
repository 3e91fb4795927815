"""Learnable prompt tokens, in one of two forms.

Gated (the default): at each of the first `depth` layers a fresh set of tokens is offered to the
layer's attention as keys and values only, behind a per-head gate that starts at 0, so the tower
starts exactly at the backbone's output, in one pass (see LayerPrompt).

Inserted (the literature's CoOp / VPT form, `gate=False`): tokens placed in the sequence right
after a prefix; with depth d > 1 the prompt positions are overwritten with a fresh set before
each of layers 1..d-1.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.base import LayerHook, LayerPrompt


def drop_vectors(vectors: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout of whole vectors (rows of the last dimension): a dropped prompt token or word
    offset is zero for that step, the rest are scaled by 1 / (1 - p)."""
    if not training or p == 0:
        return vectors
    keep = torch.rand(vectors.shape[:-1] + (1,), device=vectors.device) >= p
    return vectors * keep / (1 - p)


class PromptTokens(nn.Module):
    """`length` learnable tokens per layer for the first `depth` layers of a tower.

    `heads` > 0 makes them gated key/value prompts (one gate per layer and head); 0 makes
    them inserted tokens after the first `prefix` positions. With `dropout` p > 0, each prompt
    token is dropped with probability p in a training step.
    """

    def __init__(
        self,
        length: int,
        width: int,
        prefix: int,
        depth: int = 1,
        std: float = 0.02,
        init: torch.Tensor | None = None,
        heads: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.length = length
        self.prefix = prefix
        self.depth = depth
        self.dropout = dropout
        self.tokens = nn.Parameter(torch.randn(depth, length, width) * std)
        self.gate = nn.Parameter(torch.zeros(depth, heads)) if heads else None
        if init is not None:
            k = min(length, init.shape[0])
            with torch.no_grad():
                self.tokens[0, :k] = init[:k]

    @property
    def gated(self) -> bool:
        return self.gate is not None

    def vectors(self) -> torch.Tensor:
        """The [depth, length, width] prompt vectors in use (a coupled prompt derives its own)."""
        return self.tokens

    # --- gated key/value form -----------------------------------------------------------
    def layer_prompts(self) -> list[LayerPrompt]:
        """One LayerPrompt per prompted layer; dropped tokens leave that step's keys altogether."""
        vectors = self.vectors()
        if self.training and self.dropout:
            keep = torch.rand(vectors.shape[:2], device=vectors.device) >= self.dropout
            return [LayerPrompt(prefix=vectors[i][keep[i]], gate=self.gate[i]) for i in range(self.depth)]
        return [LayerPrompt(prefix=vectors[i], gate=self.gate[i]) for i in range(self.depth)]

    # --- inserted form ---------------------------------------------------------------------
    def _splice(self, x: torch.Tensor, tokens: torch.Tensor, replace: int) -> torch.Tensor:
        batch = x.shape[0]
        prompts = drop_vectors(tokens, self.dropout, self.training).to(x.dtype).unsqueeze(0).expand(batch, -1, -1)
        return torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix + replace :]], dim=1)

    def insert(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, L + length, D]."""
        return self._splice(x, self.vectors()[0], replace=0)

    def layer_hook(self) -> LayerHook | None:
        if self.depth == 1:
            return None

        vectors = self.vectors()

        def hook(layer: int, x: torch.Tensor) -> torch.Tensor:
            if 0 < layer < self.depth:
                return self._splice(x, vectors[layer], replace=self.length)
            return x

        return hook
