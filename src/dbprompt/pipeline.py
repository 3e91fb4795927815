"""The one image-encoding pipeline: decode in worker processes while the model computes, encode in batches.

Training, evaluation and indexing all read images through `decode_batches`, so a bad image is
found (and named with its metadata line) the first time any command decodes it, and never needs
a separate checking pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data.errors import BadInputReport, DataError, Location, Reporter
from .data.images import read_image
from .data.records import Record
from .locking import release_inherited_locks
from .model import PromptedCLIP
from .runtime import Runtime


@dataclass
class Decoded:
    """One batch: the input positions that decoded, their pixels, sizes and file sha256, and those that did not."""

    indices: list[int]
    images: torch.Tensor
    sizes: list[tuple[int, int]]
    digests: list[str]
    bad: list[int]


class _Files(Dataset):
    def __init__(self, records: Sequence[Record], transform: Callable):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        record = self.records[i]
        try:
            image, digest = read_image(record.path, record.limits, record.member)  # the database's root and pixel limit
        except DataError as e:
            return i, None, None, None, (e.problem, e.detail)
        return i, self.transform(image), image.size, digest, None


def _collate(items: list) -> tuple[Decoded, list[tuple[int, str, str]]]:
    ok = [it for it in items if it[4] is None]
    images = torch.stack([it[1] for it in ok]) if ok else torch.empty(0)
    failed = [(it[0], *it[4]) for it in items if it[4] is not None]
    decoded = Decoded([it[0] for it in ok], images, [it[2] for it in ok], [it[3] for it in ok], [f[0] for f in failed])
    return decoded, failed


def decode_batches(
    records: Sequence[Record],
    transform: Callable,
    runtime: Runtime,
    *,
    batch_size: int = 64,
    skip_bad: bool = False,
    report: BadInputReport | None = None,
    progress: str | None = None,
) -> Iterator[Decoded]:
    """Transformed images in input order, `runtime.workers` processes decoding ahead of the consumer.

    A bad image raises DataError at its metadata line, or with `skip_bad` is left out of its
    batch and added to `report`.
    """
    loader = DataLoader(
        _Files(records, transform),
        batch_size=batch_size,
        num_workers=runtime.workers,
        collate_fn=_collate,
        prefetch_factor=2 if runtime.workers else None,
        worker_init_fn=release_inherited_locks,  # the output's lock stays with this process alone
    )
    reporter = Reporter(skip_bad, report if report is not None else BadInputReport())
    bar = tqdm(total=len(records), desc=progress, unit="img", disable=progress is None, leave=False)
    for batch, failed in loader:
        for i, problem, detail in failed:
            # Located at the metadata line that names the image, with the path in the detail.
            record = records[i]
            at = record.origin or Location(record.path, 0, unit="file")
            reporter.bad_at(at, problem, record.source + (f" ({detail})" if detail else ""))
        bar.update(len(batch.indices) + len(batch.bad))
        yield batch
    bar.close()


def embed_images(model: PromptedCLIP, images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Unit-length float32 image features on the CPU; normalised after the cast so bf16 rounding leaves no drift."""
    with torch.no_grad(), runtime.autocast():
        features = model.encode_image(images.to(runtime.device), normalize=False)
    return F.normalize(features.float(), dim=-1).cpu()


def encode_texts(model: PromptedCLIP, texts: Sequence[str], runtime: Runtime, batch_size: int = 256) -> torch.Tensor:
    """Unit-length float32 text features [N, E] on the CPU."""
    out = []
    for start in range(0, len(texts), batch_size):
        with torch.no_grad(), runtime.autocast():
            features = model.encode_texts(list(texts[start : start + batch_size]), normalize=False)
        out.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def encode_records(
    models: Sequence[PromptedCLIP],
    records: Sequence[Record],
    runtime: Runtime,
    *,
    batch_size: int = 64,
    skip_bad: bool = False,
    report: BadInputReport | None = None,
    progress: str | None = None,
) -> tuple[list[torch.Tensor], list[int]]:
    """Each model's unit image features [n_ok, E] from one decode of each image, and the positions kept.

    All models must share one image transform (one backbone), which is how several prompt files
    of one database are compared.
    """
    if not models:
        raise ValueError("no model to encode with")
    transform = models[0].backbone.image_transform()
    outs: list[list[torch.Tensor]] = [[] for _ in models]
    kept: list[int] = []
    for batch in decode_batches(records, transform, runtime, batch_size=batch_size, skip_bad=skip_bad, report=report, progress=progress):
        if not batch.indices:
            continue
        kept += batch.indices
        for out, model in zip(outs, models):
            out.append(embed_images(model, batch.images, runtime))
    return [torch.cat(out) if out else torch.empty(0, 0) for out in outs], kept
