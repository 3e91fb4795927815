"""Validation as search will see it: each validation caption's image ranked among many images.

In a gallery of the 300 validation images alone, prompts on shifted images scored 4 points over
zero-shot where the same weights lost 5 on a 1,000-image test (BENCHMARKS.md), so the gallery is
filled up with training images to VALIDATION_GALLERY images.
"""

from __future__ import annotations

from typing import Sequence

from ..evaluation import score
from .images import ImageBank

VALIDATION_GALLERY = 1000


def distractor_positions(n_train: int, n_val: int, gallery: int = VALIDATION_GALLERY) -> list[int]:
    """Training images spread evenly over the list (not its first folder), to fill the gallery."""
    extra = max(0, gallery - n_val)
    return list(range(n_train)) if extra >= n_train else [i * n_train // extra for i in range(extra)]


class Validator:
    """Scores the model on the validation images of an ImageBank, training images as distractors."""

    def __init__(self, bank: ImageBank, train: Sequence[int], val: Sequence[int], gallery: int = VALIDATION_GALLERY):
        self.bank = bank
        self.val = list(val)
        self.distractors = [train[i] for i in distractor_positions(len(train), len(self.val), gallery)]

    def __call__(self) -> dict[str, float] | None:
        if not self.val:
            return None
        model = self.bank.model.eval()
        features = self.bank.encode_all(self.val + self.distractors)
        return score(model, [self.bank.records[i] for i in self.val], features, self.bank.runtime)
