"""Which training pairs are positives for each other where captions are labels: images that share a
caption (a class folder's text, a tag's), compared as `metrics.text_key` compares them."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

from ..data.records import Record, text_key
from ..metrics import LABELS_SHARE
from .loss import Keys


class CaptionKeys:
    """Each caption text's id and each image's ids; batches get them as the loss takes them.

    Only where the captions are labels (`metrics.LABELS_SHARE` of the distinct texts belong to several
    images): there an image is a positive for every text it has, whichever of its texts a step drew.
    Descriptions that only sometimes coincide keep the plain loss (open_clip's, exactly), which already
    treats verbatim repeats as multi-positive targets would (their features tie); counting another
    image's drawn description as a positive for every image that has it measured the same on the
    proxy's visual shift (BENCHMARKS.md, *Class folders and marks*).
    Ids come from the records alone, in order, so every rank of a torchrun job numbers them alike.
    """

    def __init__(self, records: Sequence[Record], labels: bool | None = None):
        """`labels`: whether captions are labels; None decides from the records (the rule above)."""
        self.ids: dict[str, int] = {}
        self.of_image = [sorted({self.ids.setdefault(text_key(c), len(self.ids)) for c in r.captions}) for r in records]
        self.width = max((len(k) for k in self.of_image), default=1)
        images = Counter(k for keys in self.of_image for k in keys)
        shared = bool(images) and 100.0 * sum(n > 1 for n in images.values()) / len(images) >= LABELS_SHARE
        self.labels = shared if labels is None else labels

    def batch(self, images: Sequence[int], captions: Sequence[str]) -> Keys | None:
        """Keys of the pairs (image `images[i]`, caption `captions[i]`); None where the captions are not
        labels (the loss is then ClipLoss exactly, at no cost)."""
        if not self.labels:
            return None
        image_keys = torch.full((len(images), self.width), -1, dtype=torch.long)
        for row, i in enumerate(images):
            image_keys[row, : len(self.of_image[i])] = torch.tensor(self.of_image[i])
        return image_keys, torch.tensor([self.ids[text_key(c)] for c in captions], dtype=torch.long)
