"""Which attributes a backbone sees: the true caption against the same caption with one attribute word
swapped for each other value (0.5: blind to that attribute). Class folders (issue 25) ask a backbone for
shapes; a world where colour, size and place already tell images apart never asks, and a backbone
pre-trained there may not know them. Only the first attribute word of a caption is swapped, and only
where the caption uses the world's own word for it.
"""

from __future__ import annotations

import re

import torch

from dbprompt.data import Record
from dbprompt.model import PromptedCLIP
from dbprompt.pipeline import encode_records, encode_texts
from dbprompt.runtime import CPU, Runtime

from .world import scene as proxy_scene
from .world.broad import scene as broad_scene

VOCABULARY = {
    "proxy": {"shape": proxy_scene.SHAPES, "colour": tuple(proxy_scene.COLOURS), "size": proxy_scene.SIZES},
    "broad": {"shape": broad_scene.SHAPES, "colour": tuple(broad_scene.COLOURS), "size": broad_scene.SIZES},
}


def swaps(caption: str, words: tuple[str, ...]) -> list[str]:
    """The caption with its first word of `words` replaced by each other one (none if it has none)."""
    found = re.search(r"\b(" + "|".join(map(re.escape, words)) + r")\b", caption)
    if found is None:
        return []
    return [caption[: found.start()] + w + caption[found.end() :] for w in words if w != found.group(1)]


@torch.no_grad()
def probe(model: PromptedCLIP, records: list[Record], vocabulary: dict[str, tuple[str, ...]], runtime: Runtime = CPU) -> dict[str, dict]:
    """Per attribute: the share of (image, swapped caption) pairs the true caption outscores, over how many captions."""
    (images,), _ = encode_records([model], records, runtime)
    out = {}
    for attribute, words in vocabulary.items():
        wins, pairs, captions = 0, 0, 0
        for image, record in zip(images, records, strict=True):
            caption = record.captions[0]
            others = swaps(caption, words)
            if not others:
                continue
            scores = encode_texts(model, [caption, *others], runtime) @ image
            wins += int((scores[0] > scores[1:]).sum())
            pairs, captions = pairs + len(others), captions + 1
        out[attribute] = {"true_wins": wins / pairs if pairs else float("nan"), "captions": captions}
    return out
