"""Batched, no-grad encoding: shared by training caches, evaluation, indexing and search."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import open_image
from .model import PromptedCLIP
from .runtime import precision


def load_image_batch(paths: Sequence[Path], transform: Callable) -> torch.Tensor:
    return torch.stack([transform(open_image(p)) for p in paths])


def embed_images(
    model: PromptedCLIP, images: torch.Tensor, device: str, bf16: bool, zero_shot: torch.Tensor | None = None
) -> np.ndarray:
    """Unit-length float32 image vectors; normalised after the cast so bf16 rounding leaves no drift.

    `zero_shot`: the images' `image_zero_shot` features, when already known.
    """
    with torch.no_grad(), precision(device, bf16):
        zero_shot = None if zero_shot is None else zero_shot.to(device)
        features = model.encode_image(images.to(device), normalize=False, zero_shot=zero_shot)
    return F.normalize(features.float(), dim=-1).cpu().numpy()


def embed_texts(model: PromptedCLIP, texts: Sequence[str], device: str, bf16: bool) -> np.ndarray:
    with torch.no_grad(), precision(device, bf16):
        features = model.encode_texts(list(texts), normalize=False)
    return F.normalize(features.float(), dim=-1).cpu().numpy()


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_image_files(
    model: PromptedCLIP,
    paths: Sequence[Path],
    *,
    device: str,
    bf16: bool,
    batch_size: int = 64,
    progress: str | None = None,
    zero_shot: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unit-length float32 image features [N, E] on the CPU.

    `zero_shot`: the images' `image_zero_shot_files`, so that a gated visual prompt does not
    recompute what it blends towards.
    """
    transform = model.backbone.image_transform()
    out = []
    bar = tqdm(total=len(paths), desc=progress, unit="img", disable=progress is None, leave=False)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        known = None if zero_shot is None else zero_shot[start : start + batch_size]
        out.append(torch.from_numpy(embed_images(model, load_image_batch(chunk, transform), device, bf16, known)))
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out) if out else torch.empty(0, 0)


def image_zero_shot_files(
    model: PromptedCLIP,
    paths: Sequence[Path],
    *,
    device: str,
    bf16: bool,
    batch_size: int = 64,
    load: Callable[[Sequence[Path]], torch.Tensor] | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """`model.image_zero_shot` of each file [N, E] on the CPU, in fixed batches (a resumed run gets the same numbers).

    `load` turns a batch of paths into transformed images (default: decode from disk).
    """
    if load is None:
        transform = model.backbone.image_transform()

        def load(chunk: Sequence[Path]) -> torch.Tensor:
            return load_image_batch(chunk, transform)

    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc=progress, disable=progress is None, leave=False):
        with precision(device, bf16):
            out.append(model.image_zero_shot(load(paths[start : start + batch_size]).to(device)).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def encode_captions(
    model: PromptedCLIP, texts: Sequence[str], *, device: str, bf16: bool, batch_size: int = 256
) -> torch.Tensor:
    """Unit-length float32 text features [N, E] on the CPU."""
    out = [torch.from_numpy(embed_texts(model, chunk, device, bf16)) for chunk in _batches(texts, batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)
