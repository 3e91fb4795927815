"""Swapped-word negatives for pre-training: each caption with one attribute word replaced by another is one more
negative of its image (NegCLIP's hard negative captions, Yuksekgonul et al. 2023).

In the broad world colour, place and fill style already tell almost every image of a random batch from every
other, so no batch asks either tower for the shape: the text tower drops the shape words (`probe`'s text cosine
1.000) and the image tower never learns to see shapes (lab/README.md, "Why it stays blind"). A caption whose
only fault is its shape word is a negative that only the shape tells apart, in every step, for every image.

Both hooks are the Trainer's public ones: `trainer.keys` (its batches then also carry each caption's swap) and
`trainer.loss` (which adds the swaps' term to the loss it wraps). One process only: nothing is gathered.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dbprompt.model import PromptedCLIP
from dbprompt.training.loss import ContrastiveLoss, Keys

from .probe import swaps
from .sigmoid_loss import SigmoidLoss


@dataclass(frozen=True)
class SwapBatch:
    """A batch's relevance keys (what the wrapped loss takes) and each pair's swapped caption (None: none)."""

    keys: Keys | None
    swapped: list[str | None]


class SwapKeys:
    """The Trainer's keys, each batch's with a swap of every caption: an attribute drawn by `share`, its first word
    replaced by another of its words; the draw is keyed by the caption, so a resumed run draws the same."""

    def __init__(self, inner, vocabulary: Mapping[str, tuple[str, ...]], share: Mapping[str, float], seed: int = 0):
        unknown = set(share) - set(vocabulary)
        if unknown:
            raise ValueError(f"no words for {', '.join(sorted(unknown))}; the vocabulary has {', '.join(vocabulary)}")
        self.inner, self.vocabulary, self.seed = inner, vocabulary, seed
        self.attributes = list(share)
        self.p = np.array([share[a] for a in self.attributes], dtype=float)
        self.p /= self.p.sum()

    def swap(self, caption: str) -> str | None:
        """One false variant of `caption`: the drawn attribute's word swapped, else another attribute's."""
        rng = np.random.default_rng([self.seed, zlib.crc32(caption.encode())])
        first = int(rng.choice(len(self.attributes), p=self.p))
        for a in self.attributes[first:] + self.attributes[:first]:
            found = swaps(caption, self.vocabulary[a])
            if found:
                return found[int(rng.integers(len(found)))]
        return None

    def batch(self, images: Sequence[int], captions: Sequence[str]) -> SwapBatch:
        keys = self.inner.batch(images, captions) if self.inner is not None else None
        return SwapBatch(keys, [self.swap(c) for c in captions])


class SwapNegativeLoss(nn.Module):
    """Wraps a pre-training loss (the contrastive or the sigmoid one) and adds each image's swap as a negative.

    Contrastive: the swap is one more column of the image's softmax, as NegCLIP does, which is the wrapped loss
    plus half the mean of softplus(swap logit - logsumexp of the row). Sigmoid: one more negative pair per image.
    """

    def __init__(self, loss: ContrastiveLoss | SigmoidLoss, model: PromptedCLIP):
        super().__init__()
        self.loss = loss
        self._model = (model,)  # outside the module tree: the model's parameters are trained as its own

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, keys: SwapBatch | Keys | None = None, negatives=None
    ) -> torch.Tensor:
        if not isinstance(keys, SwapBatch):
            return self.loss(image_features, text_features, keys, negatives)
        base = self.loss(image_features, text_features, keys.keys, negatives)
        rows = [i for i, s in enumerate(keys.swapped) if s is not None]
        if not rows:
            return base
        model, clip = self._model[0], self._model[0].backbone.model
        device = image_features.device
        swapped = model.encode_text(model.tokenize([keys.swapped[i] for i in rows]).to(device)).float()
        images = image_features[rows].float()
        n = len(image_features)
        if isinstance(self.loss, SigmoidLoss):  # its scale and bias are the model's
            swap_logits = clip.logit_scale.exp() * (images * swapped).sum(-1)
            return base + F.softplus(swap_logits + clip.logit_bias).sum() / n
        scale = self.loss.scale.exp()  # the contrastive loss's own temperature, where it owns one
        swap_logits = scale * (images * swapped).sum(-1)
        row_logits = scale * images @ text_features.float().T
        return base + F.softplus(swap_logits - torch.logsumexp(row_logits, dim=1)).sum() / (2 * n)


def parse_share(text: str) -> dict[str, float]:
    """'shape=0.7,size=0.3' -> {'shape': 0.7, 'size': 0.3} (the command line's form); shares need not sum to 1."""
    share = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            share[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--swap-negatives {text!r}: {part!r} is not ATTRIBUTE=SHARE (e.g. shape=0.7,size=0.3)") from None
    if not share or any(v < 0 for v in share.values()) or not sum(share.values()) > 0:
        raise ValueError(f"--swap-negatives {text!r}: give ATTRIBUTE=SHARE pairs with positive shares (e.g. shape=0.7,size=0.3)")
    return share


def format_share(share: Mapping[str, float]) -> str:
    return ",".join(f"{a}={v:g}" for a, v in share.items())
