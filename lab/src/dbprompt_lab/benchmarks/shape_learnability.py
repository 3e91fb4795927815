"""Can a proxy's image tower learn shapes at all, given the most direct signal? Its image tower and a linear
head trained on shape labels of single-shape images (cross-entropy), held-out accuracy every 50 steps.

When pre-training leaves the image features blind to shape (`attribute_probe`), this separates "the
architecture cannot see it" from "the recipe never asks for it": e.g. `--styles filled` against all four
fill styles, or `--patch 8` against the config's patch size, from random weights or from a checkpoint.

    python -m dbprompt_lab.benchmarks.shape_learnability [--model dbprompt-proxy-b] [--styles filled]
        [--patch 8] [--weights CHECKPOINT] [--steps 400] [--lr 3e-4] [--images 14400] [--save WEIGHTS]

`--save` writes the whole backbone with the image tower as trained (the text tower as loaded): a backbone
whose image features carry shape by construction, to measure what a method does once the backbone sees
what a database's labels are about (e.g. `bench_labels --pretrained WEIGHTS`).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Iterator

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from dbprompt.backbones import RANDOM
from dbprompt_lab import proxy
from dbprompt_lab.probe import single_shape_images, to_pixels
from dbprompt_lab.world.broad import scene as broad_scene
from dbprompt_lab.world.scene import SHAPES as PROXY_SHAPES

HELD_OUT = 1 / 6  # the share of the images never trained on


def image_tower(model: str, patch: int | None, weights: str | None) -> tuple[torch.nn.Module, Callable]:
    """The model's image tower and its image transform: random weights (optionally another patch size), or a
    weights file's / pre-training checkpoint's."""
    if weights is not None and patch is not None:
        raise ValueError("--patch builds a new architecture: it cannot load --weights")
    backbone = proxy.load_weights(model, weights or RANDOM)
    if patch is None:
        return backbone.image_tower, backbone.image_transform()
    cfg = open_clip.get_model_config(model)
    cfg = cfg | {"vision_cfg": cfg["vision_cfg"] | {"patch_size": patch}}
    # The sigmoid loss's bias and scale are the whole model's, not the image tower's.
    tower = CLIP(**{k: v for k, v in cfg.items() if k in ("embed_dim", "vision_cfg", "text_cfg")}).visual
    return tower, backbone.image_transform()  # the patch size leaves the input as it was


def shape_data(world: str, n: int, image_size: int, styles: str, transform: Callable) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Single-shape images as model input and their shape indices; `styles` "filled" keeps only filled shapes."""
    images, labels = single_shape_images(world, n, image_size, seed=5)
    style_of = labels.get("style") or ["filled"] * n  # the proxy world draws filled shapes only
    keep = [i for i in range(n) if styles in ("all", style_of[i])]
    if not keep:
        raise ValueError(f"no {styles} shapes among {n} images of the {world} world")
    kinds = list(broad_scene.SHAPES if world == "broad" else PROXY_SHAPES)
    pixels = to_pixels([images[i] for i in keep], transform)
    return pixels, torch.tensor([kinds.index(labels["shape"][i]) for i in keep]), kinds


def learn(tower: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int, *, steps: int, lr: float,
          batch_size: int, every: int = 50, seed: int = 0) -> Iterator[tuple[int, float, float]]:
    """Train tower + a linear head on the first 5/6 of (x, y); every `every` steps yield (step, loss, held-out accuracy)."""
    torch.manual_seed(seed)
    cut = len(y) - max(1, int(len(y) * HELD_OUT))
    head = torch.nn.Linear(tower.output_dim, classes)
    tower.train().requires_grad_(True)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=lr, weight_decay=0.05)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 30))
    rng = np.random.default_rng(seed)
    for step in range(1, steps + 1):
        batch = torch.from_numpy(rng.integers(0, cut, batch_size))
        loss = F.cross_entropy(head(tower(x[batch])), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
        if step % every == 0 or step == steps:
            tower.eval()
            with torch.no_grad():
                right = sum((head(tower(x[i : i + 256])).argmax(1) == y[i : i + 256]).sum().item() for i in range(cut, len(y), 256))
            tower.train()
            yield step, loss.item(), right / (len(y) - cut)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dbprompt-proxy-b", choices=list(proxy.PROXIES))
    ap.add_argument("--styles", default="all", choices=["all", *broad_scene.STYLES], help="fill styles kept (the broad world's)")
    ap.add_argument("--patch", type=int, default=None, help="another patch size for the random-weights tower")
    ap.add_argument("--weights", type=proxy.weights_file, default=None, help="start from a weights file or pre-training checkpoint (default: random)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=14400, help="single-shape images drawn (5/6 train, 1/6 held out)")
    ap.add_argument("--save", default=None, help="write the backbone with the trained image tower here (.safetensors)")
    args = ap.parse_args()
    spec = proxy.get_proxy(args.model)
    if args.save and args.patch:
        ap.error("--save writes the model's own architecture: it cannot take --patch")
    try:
        tower, transform = image_tower(spec.name, args.patch, args.weights)
        x, y, kinds = shape_data(spec.world, args.images, spec.image_size, args.styles, transform)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    print(f"{spec.name} image tower ({args.weights or 'random weights'}, patch {args.patch or 'as configured'}), "
          f"{len(kinds)} shapes, styles {args.styles}: {len(y)} images; chance {1 / len(kinds):.3f}", flush=True)
    start = time.perf_counter()
    for step, loss, accuracy in learn(tower, x, y, len(kinds), steps=args.steps, lr=args.lr, batch_size=args.batch_size):
        print(f"  step {step:>5}  loss {loss:.3f}  held-out accuracy {accuracy:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.save:
        backbone = proxy.load_weights(spec.name, args.weights or RANDOM)
        backbone.image_tower.load_state_dict(tower.state_dict())
        proxy.save_weights(backbone, args.save, spec.name)
        print(f"wrote {args.save}: {spec.name} with this image tower")


if __name__ == "__main__":
    main()
