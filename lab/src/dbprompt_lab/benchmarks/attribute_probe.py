"""Which attributes a backbone sees: on a world's source test images, the true caption against the same
caption with one attribute word swapped for each other value (0.5: blind to that attribute).

    python -m dbprompt_lab.benchmarks.attribute_probe [--model dbprompt-proxy] [--weights FILE] [--images 400]

The probe itself is `dbprompt_lab.probe` (every pre-training record holds it too).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dbprompt.backbones import load_backbone
from dbprompt.data import load_database
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt_lab import proxy
from dbprompt_lab.probe import VOCABULARY, probe
from dbprompt_lab.world import write_database


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
