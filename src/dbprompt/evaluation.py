"""Retrieval evaluation of prompted models on a list of records, exact search."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .data.errors import BadInputReport
from .data.records import Record
from .metrics import LABELS_SHARE, TABLE_KS, label_metrics, retrieval_metrics, shares_texts
from .model import PromptedCLIP
from .pipeline import encode_records, encode_texts
from .runtime import CPU, Runtime


@dataclass
class EvalReport:
    """Recall@K of zero-shot and (with a prompt file) the prompts, on one split."""

    split: str
    images: int
    captions: int
    backbone: str
    pretrained: str | None
    rows: dict[str, dict[str, float]]
    bad_input: BadInputReport = field(default_factory=BadInputReport)
    database: str = ""
    how: str = ""
    saturated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """What `dbprompt eval --json` prints (besides each row's parameter count and file size)."""
        data = dataclasses.asdict(self) | {"skipped": self.bad_input.counts, "report": self.report and str(self.report)}
        del data["bad_input"]
        return data


def caption_index(records: Sequence[Record]) -> tuple[list[str], np.ndarray]:
    """All captions flattened, and for each the index of its image."""
    texts: list[str] = []
    owner: list[int] = []
    for i, record in enumerate(records):
        texts.extend(record.captions)
        owner.extend([i] * len(record.captions))
    return texts, np.asarray(owner, dtype=np.int64)


def score(
    model: PromptedCLIP,
    records: Sequence[Record],
    image_features: torch.Tensor,
    runtime: Runtime = CPU,
    ks: Sequence[int] = TABLE_KS,
) -> dict[str, float]:
    """Both common retrieval definitions, given the features of `records`' images then of any distractors,
    and where captions repeat (folders, tags), the label-level ones over `records`' own images: validation's
    distractors are training images, which a trained model knows by heart (counted relevant, they put a
    validation mAP of 67 beside a held-out one of 25).

    Text->image queries rank against the distractors too (see retrieval_metrics). More `ks`
    than the table's give a report its recall@K curves from the same ranking.
    """
    if not records:
        raise ValueError("nothing to evaluate: the split is empty")
    if len(image_features) < len(records):
        raise ValueError(f"{len(image_features)} image features for {len(records)} images")
    model.eval()
    texts, owner = caption_index(records)
    text_features = encode_texts(model, texts, runtime)
    n = len(records)
    metrics = retrieval_metrics(text_features, image_features[:n], owner, ks, distractors=image_features[n:])
    if shares_texts(texts):
        metrics |= label_metrics(text_features, image_features[:n], texts, [r.captions for r in records])
    return metrics


def encode_split(
    models: Sequence[PromptedCLIP],
    records: Sequence[Record],
    runtime: Runtime = CPU,
    *,
    batch_size: int = 64,
    distractors: Sequence[Record] = (),
    skip_bad: bool = False,
    report: BadInputReport | None = None,
    progress: str | None = None,
) -> tuple[list[Record], list[torch.Tensor]]:
    """The split's records that decoded, and each model's image features: theirs, then the distractors'.

    Every image is decoded once for all models. With `skip_bad`, images that fail to decode
    leave the evaluation (with their captions) and are counted in `report`.
    """
    if not records:
        raise ValueError("nothing to evaluate: the split is empty")
    for model in models:
        model.eval()
    gallery = list(records) + list(distractors)
    features, kept = encode_records(
        list(models), gallery, runtime, batch_size=batch_size, skip_bad=skip_bad, report=report, progress=progress
    )
    # `kept` is in input order: the split's own images first, then the distractors.
    own = [records[i] for i in kept if i < len(records)]
    if not own:
        raise ValueError("nothing to evaluate: no image of the split could be read")
    return own, features


def evaluate_models(
    models: Mapping[str, PromptedCLIP], records: Sequence[Record], runtime: Runtime = CPU, **options: Any
) -> dict[str, dict[str, float]]:
    """Metrics of each model on `records`, every image decoded once for all of them; `options` as encode_split's."""
    own, features = encode_split(list(models.values()), records, runtime, **options)
    return {name: score(model, own, f, runtime) for (name, model), f in zip(models.items(), features)}


def selection_key(metrics: dict[str, float]) -> str:
    """What chooses the epoch: text->image R@1, the number search users feel; label-level mAP where most
    queries have several relevant images (folders, tags), since R@1's ties then count against every query."""
    return "label/t2i_mAP" if metrics.get("label/shared", 0.0) >= LABELS_SHARE else "clip_benchmark/t2i_R@1"


def selection_score(metrics: dict[str, float]) -> float:
    """The `selection_key` metric; R-sum (R@1/5/10 both ways) breaks ties.

    Choosing epochs by R-sum alone was seen to keep epochs whose image->text gains hid a
    text->image loss below zero-shot.
    """
    rsum = sum(metrics[f"clip_benchmark/{d}_R@{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10))
    return metrics[selection_key(metrics)] + rsum / 1e4
