"""Which training pairs are positives for each other: images that share a caption (a class folder's
text, a tag's, a caption repeated verbatim), compared as `metrics.text_key` compares them."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

from ..data.records import Record
from ..metrics import text_key
from .loss import Keys


class CaptionKeys:
    """Each caption text's id and each image's ids; batches get them as the loss takes them.

    Ids come from the records alone, in order, so every rank of a torchrun job numbers them alike.
    """

    def __init__(self, records: Sequence[Record]):
        self.ids: dict[str, int] = {}
        self.of_image = [sorted({self.ids.setdefault(text_key(c), len(self.ids)) for c in r.captions}) for r in records]
        self.width = max((len(k) for k in self.of_image), default=1)
        self.shared = any(n > 1 for n in Counter(k for keys in self.of_image for k in keys).values())

    def batch(self, images: Sequence[int], captions: Sequence[str]) -> Keys | None:
        """Keys of the pairs (image `images[i]`, caption `captions[i]`); None where no caption is shared
        (the loss is then ClipLoss exactly, at no cost)."""
        if not self.shared:
            return None
        image_keys = torch.full((len(images), self.width), -1, dtype=torch.long)
        for row, i in enumerate(images):
            image_keys[row, : len(self.of_image[i])] = torch.tensor(self.of_image[i])
        return image_keys, torch.tensor([self.ids[text_key(c)] for c in captions], dtype=torch.long)
