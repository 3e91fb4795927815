"""The symmetric contrastive loss (open_clip's ClipLoss) and the temperature it owns and calibrates.

Where texts repeat (class folders, tags), a pair's caption may be relevant to other images of the
batch: the targets then spread over every relevant item, both ways (UniCL, SupCon). Identical texts
have identical features, so over exact repeats this equals ClipLoss (a row's positives tie); it differs
where one image has several keys (its tags), and it is what marks will train with.
"""

from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss, gather_features
from torch import distributed as dist
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

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, keys: Keys | None = None, negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`keys`: (image keys [B, K] padded with -1, text keys [B]) of this rank's pairs; None: all unique.
        `negatives`: features of images marked irrelevant to some of the batch's texts, this rank's share (under
        torchrun every rank passes a tensor, maybe empty, whenever one does: they are gathered like the pairs)."""
        if keys is not None and self.clip.world_size > 1:
            keys = (_gather(keys[0]), _gather(keys[1]))
        if negatives is not None and self.clip.world_size > 1:
            image_features, text_features = gather_features(
                image_features, text_features, gather_with_grad=True, rank=self.clip.rank, world_size=self.clip.world_size
            )
            return hard_negative_loss(image_features, text_features, _gather_ragged(negatives), self.scale, keys)
        if negatives is not None and len(negatives):
            return hard_negative_loss(image_features, text_features, negatives, self.scale, keys)
        return clip_loss(image_features, text_features, self.scale, self.clip, keys)

    @torch.no_grad()
    def calibrate(
        self, image_features: torch.Tensor, text_features: torch.Tensor, batch_size: int, keys: Keys | None = None
    ) -> tuple[float, float]:
        """Move the temperature to the best fit of these pairs; returns the logit scale before and after."""
        before = float(self.scale.exp())
        self.scale.fill_(calibrate_logit_scale(image_features, text_features, batch_size, keys=keys))
        return before, float(self.scale.exp())


# Relevance keys of a batch's pairs: each image's keys [B, K] (-1 pads), each text's key [B].
Keys = tuple[torch.Tensor, torch.Tensor]


def relevance(keys: Keys) -> torch.Tensor:
    """[B, B] bool: text j is relevant to image i when its key is one of image i's."""
    image_keys, text_keys = keys
    return (image_keys[:, :, None] == text_keys[None, None, :]).any(dim=1)


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor`, in rank order, as open_clip gathers the features."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _gather_ragged(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `tensor` (their counts may differ), in rank order; no gradient (marked negatives
    train the text side only)."""
    counts = _gather(torch.tensor([len(tensor)], device=tensor.device))
    padded = torch.zeros((int(counts.max()), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor.detach()
    return torch.cat([part[:n] for part, n in zip(_gather(padded).split(len(padded)), counts.tolist())])


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    loss: ClipLoss | None = None,
    keys: Keys | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE in float32 at exp(logit_scale), clamped as CLIP does; with `keys` (over the whole,
    gathered batch), each row's target spread evenly over its relevant columns."""
    loss = loss or ClipLoss()
    scale = logit_scale.exp().clamp(max=MAX_SCALE)
    relevant = relevance(keys).to(image_features.device) if keys is not None else None
    if relevant is None or int(relevant.sum()) == len(relevant):  # only the pairs themselves: ClipLoss exactly
        return loss(image_features.float(), text_features.float(), scale)
    per_image, per_text = loss.get_logits(image_features.float(), text_features.float(), scale)
    return (_soft_cross_entropy(per_image, relevant) + _soft_cross_entropy(per_text, relevant.T)) / 2


def hard_negative_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, negatives: torch.Tensor, logit_scale: torch.Tensor, keys: Keys | None = None
) -> torch.Tensor:
    """`clip_loss` with more images on the text->image side that no text of the batch is relevant to: the
    ones a user marked irrelevant to one of them (ranked high, they are the negatives worth most)."""
    scale = logit_scale.exp().clamp(max=MAX_SCALE)
    n = len(image_features)
    relevant = relevance(keys) if keys is not None else torch.eye(n, dtype=torch.bool)
    relevant = relevant.to(image_features.device)
    images = torch.cat([image_features, negatives]).float()
    per_image = scale * images @ text_features.float().T  # [B + E, B]
    none = torch.zeros(len(negatives), n, dtype=torch.bool, device=relevant.device)
    return (_soft_cross_entropy(per_image[:n], relevant) + _soft_cross_entropy(per_image.T, torch.cat([relevant, none]).T)) / 2


def _soft_cross_entropy(logits: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    targets = relevant.float()
    return -((targets / targets.sum(dim=1, keepdim=True)) * logits.log_softmax(dim=1)).sum(dim=1).mean()


def calibrate_logit_scale(
    image_features: torch.Tensor, text_features: torch.Tensor, batch_size: int, grid: int = 64, keys: Keys | None = None
) -> float:
    """The log logit scale in [0, ln 100] that minimises the mean in-batch loss of these pairs (with the
    training's targets: `keys` as `clip_loss` takes them, for all pairs)."""
    candidates = torch.linspace(0.0, math.log(MAX_SCALE), grid)
    losses = torch.zeros(grid)
    loss = ClipLoss()
    for start in range(0, len(image_features), batch_size):
        img, txt = image_features[start : start + batch_size].float(), text_features[start : start + batch_size].float()
        if len(img) < 2:
            break
        part = None if keys is None else (keys[0][start : start + batch_size], keys[1][start : start + batch_size])
        for i, c in enumerate(candidates):
            losses[i] += clip_loss(img, txt, c, loss, part)
    return float(candidates[int(losses.argmin())])
