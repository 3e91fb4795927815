"""The symmetric contrastive loss (open_clip's ClipLoss) and the temperature it owns and calibrates."""

from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss
from torch import nn

# The most a logit scale may reach, as CLIP clamps it.
MAX_SCALE = 100.0


class ContrastiveLoss(nn.Module):
    """InfoNCE over a batch's matching (image, caption) pairs at a temperature this module owns.

    `logit_scale` is log(1 / temperature). Owned, it is a trainable copy of the backbone's value
    that `calibrate` moves to the one fitting this database. Not owned, the backbone's own is used
    as it is (as CoOp and VPT train; full fine-tuning then learns it with the weights). It is never
    part of a prompt file: ranking by cosine does not depend on it.
    """

    def __init__(self, backbone_scale: torch.Tensor, own: bool = True, rank: int = 0, world: int = 1):
        """With `world` > 1, each rank's features are gathered (with their gradients) into the whole batch."""
        super().__init__()
        self.own = own
        if own:
            self.logit_scale = nn.Parameter(backbone_scale.detach().float().clone())
        else:
            self._borrowed = (backbone_scale,)  # outside the module tree: the backbone owns it
        self.clip = ClipLoss(gather_with_grad=True, rank=rank, world_size=world)

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale if self.own else self._borrowed[0]

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return clip_loss(image_features, text_features, self.scale, self.clip)

    @torch.no_grad()
    def calibrate(self, image_features: torch.Tensor, text_features: torch.Tensor, batch_size: int) -> tuple[float, float]:
        """Move the temperature to the best fit of these pairs; returns the logit scale before and after."""
        before = float(self.scale.exp())
        self.scale.fill_(calibrate_logit_scale(image_features, text_features, batch_size))
        return before, float(self.scale.exp())


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, loss: ClipLoss | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE in float32 at exp(logit_scale), clamped as CLIP does."""
    loss = loss or ClipLoss()
    return loss(image_features.float(), text_features.float(), logit_scale.exp().clamp(max=MAX_SCALE))


def calibrate_logit_scale(
    image_features: torch.Tensor, text_features: torch.Tensor, batch_size: int, grid: int = 64
) -> float:
    """The log logit scale in [0, ln 100] that minimises the mean in-batch loss of these pairs."""
    candidates = torch.linspace(0.0, math.log(MAX_SCALE), grid)
    losses = torch.zeros(grid)
    loss = ClipLoss()
    for start in range(0, len(image_features), batch_size):
        img, txt = image_features[start : start + batch_size].float(), text_features[start : start + batch_size].float()
        if len(img) < 2:
            break
        for i, c in enumerate(candidates):
            losses[i] += clip_loss(img, txt, c, loss)
    return float(candidates[int(losses.argmin())])
