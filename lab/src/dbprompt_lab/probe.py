"""Which attributes a backbone sees. Class folders (issue 25) ask a backbone for shapes; a world where colour,
size and place already tell images apart never asks, and a backbone pre-trained there may not know them.

- `probe`: the true caption against the same caption with one attribute word swapped for each other value
  (0.5: blind to that attribute); only the first attribute word of a caption is swapped, and only where the
  caption uses the world's own word for it. It needs both towers to know the attribute. Beside it, the text
  tower alone: the mean cosine between a caption and its swaps (1.0: the word is ignored, and a contrastive
  step can hardly teach it again, since neither tower's gradient then points along it).
- `linear_probe`: a linear classifier on the frozen image features of single-shape images (against
  chance): whether the image tower carries the attribute at all, words aside.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dbprompt.data import Record
from dbprompt.model import PromptedCLIP
from dbprompt.pipeline import embed_images, encode_records, encode_texts
from dbprompt.runtime import CPU, Runtime

from .world import scene as proxy_scene
from .world.broad import scene as broad_scene
from .world.broad.render import render as broad_render
from .world.render import render as proxy_render
from .world.scene import pick

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
    """Per attribute: the share of (image, swapped caption) pairs the true caption outscores, the mean cosine of the
    true caption's text features with a swap's, over how many captions."""
    (images,), _ = encode_records([model], records, runtime)
    out = {}
    for attribute, words in vocabulary.items():
        wins, pairs, captions, cosine = 0, 0, 0, 0.0
        for image, record in zip(images, records, strict=True):
            caption = record.captions[0]
            others = swaps(caption, words)
            if not others:
                continue
            texts = encode_texts(model, [caption, *others], runtime)
            scores = texts @ image
            wins += int((scores[0] > scores[1:]).sum())
            cosine += float((texts[1:] @ texts[0]).sum())
            pairs, captions = pairs + len(others), captions + 1
        nan = float("nan")
        out[attribute] = {
            "true_wins": wins / pairs if pairs else nan,
            "text_cosine": cosine / pairs if pairs else nan,
            "captions": captions,
        }
    return out


def single_shape_images(world: str, n: int, image_size: int, seed: int = 0) -> tuple[list[np.ndarray], dict[str, list[str]]]:
    """`n` images of one shape each, the shapes in turn and every other attribute drawn at random; with
    each image's attribute values (shape, colour, size, and in the broad world its fill style)."""
    rng = np.random.default_rng(seed)
    kinds = broad_scene.SHAPES if world == "broad" else proxy_scene.SHAPES
    images, labels = [], {"shape": [], "colour": [], "size": []} | ({"style": []} if world == "broad" else {})
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if world == "broad":
            b = broad_scene
            s = b.Shape(kind, pick(rng, list(b.COLOURS)), pick(rng, b.SIZES), pick(rng, list(b.POSITIONS)), pick(rng, b.STYLES))
            scene = b.Scene(pick(rng, list(b.BACKGROUNDS)), pick(rng, b.PATTERNS), (s,))
            images.append(broad_render(scene, rng, size=image_size, visual="none"))
            labels["style"].append(s.style)
        else:
            p = proxy_scene
            s = p.Shape(kind, pick(rng, list(p.COLOURS)), pick(rng, p.SIZES), pick(rng, list(p.POSITIONS)))
            images.append(proxy_render(p.Scene(pick(rng, list(p.BACKGROUNDS)), (s,)), rng, size=image_size, shifted=False))
        for attribute, value in (("shape", s.kind), ("colour", s.colour), ("size", s.size)):
            labels[attribute].append(value)
    return images, labels


def linear_accuracy(features: torch.Tensor, values: list[str], train_share: float = 0.75) -> float:
    """Held-out accuracy of a multinomial logistic regression (L2, standardised features) fitted on the first
    `train_share` of the rows: whether the features carry the attribute at all, text tower aside."""
    vocab = sorted(set(values))
    y = torch.tensor([vocab.index(v) for v in values])
    cut = int(train_share * len(values))
    x = features.double()
    x = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], len(vocab), dtype=torch.double, requires_grad=True)
    b = torch.zeros(len(vocab), dtype=torch.double, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x[:cut] @ w + b, y[:cut]) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((x[cut:] @ w + b).argmax(1) == y[cut:]).double().mean())


def to_pixels(images: list[np.ndarray], transform: Callable) -> torch.Tensor:
    """uint8 (H, W, 3) arrays as one batch of model input, through the backbone's own image transform."""
    return torch.stack([transform(Image.fromarray(a)) for a in images])


@torch.no_grad()
def linear_probe(model: PromptedCLIP, world: str, n: int = 2400, runtime: Runtime = CPU) -> dict[str, dict[str, float]]:
    """Per attribute, held-out accuracy of a linear classifier on the frozen image features of single-shape
    images, beside chance: what the image tower sees, whether or not its words for it are learned."""
    images, labels = single_shape_images(world, n, model.backbone.image_size[0])
    pixels = to_pixels(images, model.backbone.image_transform())
    features = torch.cat([embed_images(model, pixels[i : i + 256], runtime) for i in range(0, n, 256)])
    return {a: {"accuracy": round(linear_accuracy(features, v), 4), "chance": round(1 / len(set(v)), 4)} for a, v in labels.items()}
