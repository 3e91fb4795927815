"""Which attributes a backbone sees: on a world's source test images, the true caption against the same
caption with one attribute word swapped for each other value (0.5: blind to that attribute), and how alike
the text tower embeds the two (cosine 1.000: it ignores the word); and a linear
classifier on the image features of single-shape images (against chance).

    python -m dbprompt_lab.benchmarks.attribute_probe [--model dbprompt-proxy] [--weights FILE] [--images 400]

`--weights`: a weights file, or a pre-training checkpoint (runs/proxy-b/checkpoint.safetensors), to follow a
pre-training as it goes. The probes themselves are `dbprompt_lab.probe` (every pre-training record holds them).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dbprompt.data import load_database
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt_lab import proxy
from dbprompt_lab.probe import VOCABULARY, linear_probe, probe
from dbprompt_lab.world import write_database


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=proxy.NAME, choices=list(proxy.PROXIES))
    ap.add_argument("--weights", type=proxy.weights_file, default=None, help="weights file or pre-training checkpoint (default: the shipped weights)")
    ap.add_argument("--world", default=None, choices=list(VOCABULARY), help="(default: the model's)")
    ap.add_argument("--images", type=int, default=400, help="source test images of the caption probe")
    ap.add_argument("--linear-images", type=int, default=2400, help="single-shape images of the linear probe (3/4 fit, 1/4 test)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = proxy.get_proxy(args.model)
    world = args.world or spec.world
    model = PromptedCLIP(proxy.load_weights(spec.name, args.weights), PromptConfig.none()).eval()
    with tempfile.TemporaryDirectory(prefix="attribute_probe.") as work:
        db = write_database(Path(work) / "db", args.images, domain="source", seed=proxy.TEST_SEED, image_size=spec.image_size, world=world)
        result = probe(model, load_database(db).records, VOCABULARY[world])
    print(f"{spec.name} on the {world} world's source test ({args.images} images): true caption over a one-word swap; "
          "text features' cosine with the swap (1.000: the word is ignored)")
    for attribute, r in result.items():
        print(f"  {attribute:<7} {r['true_wins']:.3f}  cosine {r['text_cosine']:.3f}  ({r['captions']} captions)")
    print(f"linear classifier on the image features of {args.linear_images} single-shape images: held-out accuracy (chance)")
    for attribute, r in linear_probe(model, world, args.linear_images).items():
        print(f"  {attribute:<7} {r['accuracy']:.3f}  ({r['chance']:.3f})")


if __name__ == "__main__":
    main()
