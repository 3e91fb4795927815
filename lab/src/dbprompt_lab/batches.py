"""Batches of look-alike images: contrastive hard negatives found from the captions alone (and twins kept together).

In random batches of a database whose images differ in one attribute at a time (a position,
a size), the loss soon nears zero while retrieval over the whole database still confuses
look-alikes: no batch asks the model to tell them apart. Grouping images whose captions share
most of their words puts look-alikes side by side (hard-negative batches, as in Robinson et
al. 2021 or NegCLIP, but needing no model: only the captions' words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dbprompt.data.records import Record

_WORD = re.compile(r"\w+")
# Words kept for the similarity: the most frequent ones, which bounds memory on large vocabularies.
MAX_WORDS = 4096


@dataclass(frozen=True)
class LookAlikes:
    """For each image, the images whose captions are most alike (best first), and a content id:
    images whose captions use exactly the same words share one, and are never grouped together
    (they are the same content, so each would be a false negative for the other)."""

    neighbours: np.ndarray  # [N, K] int64
    content: np.ndarray  # [N] int64


def find_look_alikes(records: Sequence[Record], k: int, chunk: int = 2048) -> LookAlikes:
    """Cosine similarity of word counts over all of an image's captions; exact in chunks of rows."""
    words = [_WORD.findall(" ".join(r.captions).lower()) for r in records]
    counts: dict[str, int] = {}
    for ws in words:
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
    vocab = {w: i for i, w in enumerate(sorted(counts, key=lambda w: (-counts[w], w))[:MAX_WORDS])}
    rows = [row for row, ws in enumerate(words) for w in ws if w in vocab]
    cols = [vocab[w] for ws in words for w in ws if w in vocab]
    bags = np.zeros((len(records), max(1, len(vocab))), dtype=np.float32)
    np.add.at(bags, (rows, cols), 1.0)
    signatures: dict[bytes, int] = {}
    content = np.array([signatures.setdefault(b.tobytes(), len(signatures)) for b in bags], dtype=np.int64)
    unit = torch.nn.functional.normalize(torch.from_numpy(bags), dim=1)
    k = min(k, len(records) - 1)
    same = torch.as_tensor(content)
    out = []
    for start in range(0, len(records), chunk):
        sim = unit[start : start + chunk] @ unit.t()
        sim[same[start : start + chunk, None] == same[None, :]] = -2.0  # itself and its duplicates
        out.append(sim.topk(k, dim=1).indices)
    neighbours = torch.cat(out).numpy() if out else np.zeros((0, k), dtype=np.int64)
    return LookAlikes(neighbours=neighbours.astype(np.int64), content=content)


def grouped_order(look_alikes: LookAlikes, group: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation made of runs of up to `group` look-alikes, the runs in random order.

    Images are visited in random order; each not yet placed opens a run and takes its most
    alike unplaced neighbours of other content. Late in an epoch's pass few neighbours are
    left, so some runs are short: those images are batched as randomly as without grouping.
    """
    n = len(look_alikes.content)
    placed = np.zeros(n, dtype=bool)
    runs: list[list[int]] = []
    for i in rng.permutation(n):
        if placed[i]:
            continue
        run, contents = [int(i)], {int(look_alikes.content[i])}
        placed[i] = True
        for j in look_alikes.neighbours[i]:
            if len(run) == group:
                break
            if not placed[j] and int(look_alikes.content[j]) not in contents:
                run.append(int(j))
                contents.add(int(look_alikes.content[j]))
                placed[j] = True
        runs.append(run)
    return np.array([i for r in rng.permutation(len(runs)) for i in runs[r]], dtype=np.int64)


def pair_order(rng: np.random.Generator, n: int) -> np.ndarray:
    """A permutation that keeps images 2p and 2p+1 side by side, the pairs in random order: with an even batch
    size every batch holds both twins of each pair (world/samples.py's shape twins)."""
    if n % 2:
        raise ValueError(f"twins come in pairs: {n} images")
    pairs = rng.permutation(n // 2)
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)
