"""Retrieval evaluation of a (prompted) model on a list of records, exact search."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data.records import Record
from .embeddings import encode_captions, encode_image_files
from .metrics import retrieval_metrics
from .model import PromptedCLIP


def caption_index(records: Sequence[Record]) -> tuple[list[str], np.ndarray]:
    """All captions flattened, and for each the index of its image."""
    texts: list[str] = []
    owner: list[int] = []
    for i, record in enumerate(records):
        texts.extend(record.captions)
        owner.extend([i] * len(record.captions))
    return texts, np.asarray(owner, dtype=np.int64)


def evaluate(
    model: PromptedCLIP,
    records: Sequence[Record],
    *,
    device: str,
    bf16: bool,
    batch_size: int = 64,
    image_features: torch.Tensor | None = None,
    distractors: Sequence[Path] = (),
    progress: str | None = None,
) -> dict[str, float]:
    """Both common retrieval definitions on `records`.

    `distractors` are further images that text->image queries rank against (see
    retrieval_metrics). `image_features` may be passed when the image side is known not
    to change (only a textual prompt is trained), so validation does not re-encode
    images: the records' features, then the distractors'.
    """
    if not records:
        raise ValueError("nothing to evaluate: the split is empty")
    model.eval()
    texts, owner = caption_index(records)
    if image_features is None:
        image_features = encode_image_files(
            model,
            [r.path for r in records] + list(distractors),
            device=device,
            bf16=bf16,
            batch_size=batch_size,
            progress=progress,
        )
    if len(image_features) != len(records) + len(distractors):
        raise ValueError(f"{len(image_features)} image features for {len(records)} images and {len(distractors)} distractors")
    text_features = encode_captions(model, texts, device=device, bf16=bf16)
    n = len(records)
    return retrieval_metrics(text_features, image_features[:n], owner, distractors=image_features[n:])


def selection_score(metrics: dict[str, float]) -> float:
    """Text->image R@1, the number search users feel; R-sum (R@1/5/10 both ways) breaks ties.

    Choosing epochs by R-sum alone was seen to keep epochs whose image->text gains hid a
    text->image loss below zero-shot.
    """
    rsum = sum(metrics[f"clip_benchmark/{d}_R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10))
    return metrics["clip_benchmark/t2i_R@1"] + rsum / 1e4
