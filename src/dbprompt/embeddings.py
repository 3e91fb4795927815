"""Batched, no-grad encoding of image files and captions: shared by training caches, evaluation and indexing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from tqdm import tqdm

from .data import open_image
from .model import PromptedCLIP
from .runtime import precision


def load_image_batch(paths: Sequence[Path], transform: Callable) -> torch.Tensor:
    return torch.stack([transform(open_image(p)) for p in paths])


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def encode_image_files(
    model: PromptedCLIP,
    paths: Sequence[Path],
    *,
    device: str,
    bf16: bool,
    batch_size: int = 64,
    progress: str | None = None,
) -> torch.Tensor:
    """L2-normalised float32 image features [N, E] on the CPU."""
    transform = model.backbone.image_transform()
    out = []
    bar = tqdm(total=len(paths), desc=progress, unit="img", disable=progress is None, leave=False)
    for chunk in _batches(paths, batch_size):
        images = load_image_batch(chunk, transform).to(device)
        with precision(device, bf16):
            out.append(model.encode_image(images).float().cpu())
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.no_grad()
def encode_captions(
    model: PromptedCLIP, texts: Sequence[str], *, device: str, bf16: bool, batch_size: int = 256
) -> torch.Tensor:
    """L2-normalised float32 text features [N, E] on the CPU."""
    out = []
    for chunk in _batches(texts, batch_size):
        ids = model.tokenize(chunk).to(device)
        with precision(device, bf16):
            out.append(model.encode_text(ids).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)
