"""Which attributes a backbone sees: on a world's source test images, the true caption against the same
caption with one attribute word swapped for each other value (0.5: blind to that attribute).

    python -m dbprompt_lab.benchmarks.attribute_probe [--model dbprompt-proxy] [--weights FILE] [--images 400]

Class folders (issue 25) ask a backbone for shapes; a world where colour, size and place already tell
images apart never asks, and a backbone pre-trained there may not know them. Only the first attribute
word of a caption is swapped, and only where the caption uses the world's own word for it.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import torch

from dbprompt.backbones import load_backbone
from dbprompt.data import Record, load_database
from dbprompt.model import PromptedCLIP
from dbprompt.pipeline import encode_records, encode_texts
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import CPU, Runtime
from dbprompt_lab import proxy
from dbprompt_lab.world import scene as proxy_scene, write_database
from dbprompt_lab.world.broad import scene as broad_scene

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=proxy.NAME, choices=list(proxy.PROXIES))
    ap.add_argument("--weights", default=None, help="weights file (default: the shipped ones)")
    ap.add_argument("--world", default=None, choices=list(VOCABULARY), help="(default: the model's)")
    ap.add_argument("--images", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = proxy.get_proxy(args.model)
    world = args.world or spec.world
    model = PromptedCLIP(load_backbone(spec.name, args.weights), PromptConfig.none()).eval()
    with tempfile.TemporaryDirectory(prefix="attribute_probe.") as work:
        db = write_database(Path(work) / "db", args.images, domain="source", seed=proxy.TEST_SEED, image_size=spec.image_size, world=world)
        result = probe(model, load_database(db).records, VOCABULARY[world])
    print(f"{spec.name} on the {world} world's source test ({args.images} images): true caption over a one-word swap")
    for attribute, r in result.items():
        print(f"  {attribute:<7} {r['true_wins']:.3f}  ({r['captions']} captions)")


if __name__ == "__main__":
    main()
