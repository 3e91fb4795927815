"""Learnable offsets to the token embeddings of a database's own words.

A textual prompt can steer how the frozen text tower reads a caption, but it cannot give
a word the tower never learned (a synonym, a product code, a medical term) a meaning.
An offset per token of the database's captions can: it is zero at the start, so training
begins exactly at zero-shot, and tokens outside the list (e.g. new words in a query)
keep their pre-trained embeddings.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenOffsets(nn.Module):
    """One zero-initialised offset vector per listed token id, added wherever that id occurs."""

    def __init__(self, ids: torch.Tensor, width: int):
        super().__init__()
        # A tensor stays on its own device, also under a meta-device skeleton (as_tensor would move it).
        ids = (ids if isinstance(ids, torch.Tensor) else torch.tensor(ids)).long().reshape(-1)
        if ids.numel() == 0:
            raise ValueError("a token vocabulary needs at least one token id")
        if ids.unique().numel() != ids.numel():
            raise ValueError("token ids of a vocabulary must be distinct")
        self.register_buffer("ids", ids.sort().values)
        self.offsets = nn.Parameter(torch.zeros(ids.numel(), width))

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings `x` [B, L, D] of token `ids` [B, L], with the listed tokens' offsets added."""
        rows = torch.searchsorted(self.ids, ids.contiguous()).clamp(max=self.ids.numel() - 1)
        hit = (self.ids[rows] == ids).unsqueeze(-1)
        return x + torch.where(hit, self.offsets[rows].to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))


def frequent_tokens(ids: torch.Tensor, limit: int) -> torch.Tensor:
    """The ids used by most captions of `ids` [N, L] (ties: smaller id first), at most `limit` of them.

    Counting captions rather than occurrences keeps a piece repeated inside a few captions
    (or padding, repeated in every one) from outranking pieces many captions use. The start,
    end and padding ids are in every caption, so they are always among the first.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    present = torch.cat([torch.unique(row) for row in ids])
    counts = torch.bincount(present)
    used = counts.nonzero().squeeze(1)  # ascending, so a stable sort breaks ties by smaller id
    order = torch.sort(counts[used], descending=True, stable=True).indices
    return used[order][:limit]
