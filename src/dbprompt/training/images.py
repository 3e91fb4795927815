"""A run's training and validation images, decoded once: as pixels up to a budget, or as frozen tower states.

One rule decides what is kept: when nothing inside the image tower trains (`image_tower_trainable`),
what the tower computes for an image (its features) never changes, so each image goes through the
tower once and only its features are kept (when all of them fit the budget); otherwise the transformed pixels are kept in memory up to the
budget and the tower runs at every step. The first pass over the images is also where a bad file is found.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..data.errors import BadInputReport
from ..data.records import Record
from ..model import PromptedCLIP
from ..pipeline import decode_batches, embed_images
from ..runtime import Runtime


class ImageBank:
    """Images by position in `records`; `frozen` holds features instead of pixels (see the module's rule)."""

    def __init__(self, records: Sequence[Record], model: PromptedCLIP, runtime: Runtime, budget_bytes: int, batch_size: int = 64):
        self.records = list(records)
        self.model = model
        self.runtime = runtime
        self.transform = model.backbone.image_transform()
        self.budget = budget_bytes
        self.batch_size = batch_size
        state_bytes = len(self.records) * model.backbone.embed_dim * 4
        self.tower_trains = model.image_tower_trainable()
        self.frozen = not self.tower_trains and state_bytes <= budget_bytes
        self.states: torch.Tensor | None = None  # [N, embed_dim] features, not unit length, when frozen
        self._pixels: dict[int, torch.Tensor] = {}
        self._used = 0

    def first_pass(self, *, skip_bad: bool = False, report: BadInputReport | None = None, progress: str | None = None) -> list[int]:
        """Decode every image once; returns the positions of those that could not be read (with `skip_bad`)."""
        kept: list[int] = []
        states = []
        was_training = self.model.training
        self.model.eval()
        for batch in decode_batches(
            self.records, self.transform, self.runtime, batch_size=self.batch_size, skip_bad=skip_bad, report=report,
            progress=progress,
        ):
            kept += batch.indices
            if self.frozen:
                with torch.no_grad(), self.runtime.autocast():
                    states.append(self.model.encode_image(batch.images.to(self.runtime.device), normalize=False).float().cpu())
            else:
                for i, pixels in zip(batch.indices, batch.images):
                    self._keep(i, pixels)
        self.model.train(was_training)
        if self.frozen and states:
            full = torch.zeros(len(self.records), states[0].shape[1])
            full[torch.as_tensor(kept, dtype=torch.long)] = torch.cat(states)
            self.states = full
        return sorted(set(range(len(self.records))) - set(kept))

    def _keep(self, i: int, pixels: torch.Tensor) -> None:
        size = pixels.numel() * pixels.element_size()
        if self._used + size <= self.budget:
            self._pixels[i] = pixels
            self._used += size

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        """Transformed images [len, 3, H, W], from memory or decoded again (beyond the budget)."""
        missing = [i for i in indices if i not in self._pixels]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            in_process = self.runtime.replace(workers=0)  # one batch: starting workers would cost more
            for batch in decode_batches([self.records[i] for i in missing], self.transform, in_process):
                fresh.update({missing[j]: t for j, t in zip(batch.indices, batch.images)})
        return torch.stack([self._pixels[i] if i in self._pixels else fresh[i] for i in indices])

    def encode(self, indices: Sequence[int], backprop: torch.Tensor | None = None) -> torch.Tensor:
        """Image features of these positions as the model gives them now; grad flows where it trains,
        through the tower (when something in it trains) for the images `backprop` marks (None: all)."""
        if self.frozen:
            return F.normalize(self._states(indices), dim=-1)
        return encode_for_step(self.model, self.pixels(indices).to(self.runtime.device), backprop if self.tower_trains else None)

    def encode_all(self, indices: Sequence[int]) -> torch.Tensor:
        """Unit features of many images without grad, in batches (for validation)."""
        out = [self._embed(chunk) for chunk in _chunks(indices, self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, 0)

    def _states(self, indices: Sequence[int]) -> torch.Tensor:
        return self.states[torch.as_tensor(list(indices), dtype=torch.long)].to(self.runtime.device)

    def _embed(self, indices: Sequence[int]) -> torch.Tensor:
        if not self.frozen:
            return embed_images(self.model, self.pixels(indices), self.runtime)
        return F.normalize(self._states(indices), dim=-1).cpu()


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def backward_mask(n: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Which of a step's n images backpropagate into the image tower: round(fraction * n) at random, at least one."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: max(1, round(fraction * n))]] = True
    return mask


def encode_for_step(model: PromptedCLIP, images: torch.Tensor, backprop: torch.Tensor | None) -> torch.Tensor:
    """Features of a training step's images, of which only those `backprop` marks keep their graph (None: all).

    The others are encoded without autograd: they still take part in the loss (their captions' positives,
    everyone's negatives) but cost no backward through the tower and keep no activations for it. Over the
    random draws the tower's gradient is the whole batch's, scaled by the fraction (Adam does not mind).
    """
    if backprop is None or bool(backprop.all()) or not torch.is_grad_enabled():
        return model.encode_image(images)
    backprop = backprop.to(images.device)
    order = torch.cat([backprop.nonzero()[:, 0], (~backprop).nonzero()[:, 0]])
    keep = int(backprop.sum())
    with torch.no_grad():
        rest = model.encode_image(images[order[keep:]])
    if not keep:  # this rank's share of the batch drew none; it still joins the loss's gather in backward
        return rest.requires_grad_()
    return torch.cat([model.encode_image(images[order[:keep]]), rest]).index_select(0, torch.argsort(order))
