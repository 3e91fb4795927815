"""A training batch's text tower in groups of like length vs in one pass, side by side in one run.

    python -m dbprompt_lab.benchmarks.bench_text_groups [--model dbprompt-proxy-b] [--batch 512] [--partial 0.25]
        [--repeats 5] [--threads 2]

`PromptedCLIP.encode_text` encodes a batch of at least 2 x TEXT_GROUP_ROWS texts in groups of rows of like
length, each trimmed to its own longest, instead of trimming the whole batch to its longest caption. Timed
here: forward and backward through every weight of the text tower (as pre-training does) on `--batch`
broad-world source captions, `--partial` of them one of the image's partial captions ("a red star"), the
two ways alternating, the median of `--repeats` after one warm-up each; and the largest difference between
their features.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import dbprompt.model as model_module
from dbprompt.backbones import RANDOM, load_backbone
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt_lab import proxy  # noqa: F401  (registers the lab's models)
from dbprompt_lab.world.broad.captions import captions, partial_captions
from dbprompt_lab.world.broad.scene import sample_scene


def batch_captions(n: int, partial: float, seed: int = 0) -> list[str]:
    """`n` source captions of random broad-world scenes, `partial` of them a partial caption instead."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        short = partial_captions(scene)
        out.append(short[rng.integers(len(short))] if rng.random() < partial else captions(scene, rng, "source", 1)[0])
    return out


def step_seconds(model: PromptedCLIP, ids: torch.Tensor, rows: int) -> tuple[float, torch.Tensor]:
    """One forward and backward of the text tower with groups of `rows` rows (a huge number: one pass)."""
    model_module.TEXT_GROUP_ROWS = rows
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    features = model.encode_text(ids)
    features.sum().backward()
    return time.perf_counter() - start, features.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dbprompt-proxy-b")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--partial", type=float, default=0.25, help="share of partial captions (proxy-b's pre-training: about a quarter)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model, RANDOM)
    backbone.requires_grad_(True)
    model = PromptedCLIP(backbone, PromptConfig.none()).train()
    ids = model.tokenize(batch_captions(args.batch, args.partial))
    one_pass_rows, default_rows = 10**9, model_module.TEXT_GROUP_ROWS
    times: dict[int, list[float]] = {one_pass_rows: [], default_rows: []}
    features = {}
    try:
        for rows in (one_pass_rows, default_rows):
            step_seconds(model, ids, rows)  # warm-up
        for _ in range(args.repeats):
            for rows in (one_pass_rows, default_rows):
                seconds, features[rows] = step_seconds(model, ids, rows)
                times[rows].append(seconds)
    finally:
        model_module.TEXT_GROUP_ROWS = default_rows
    lengths = (ids != backbone.text_pad_id).sum(dim=1).float()
    one, grouped = statistics.median(times[one_pass_rows]), statistics.median(times[default_rows])
    print(f"{args.model}, {args.batch} captions (mean {lengths.mean():.1f} tokens, longest {lengths.max():.0f}), "
          f"{args.threads} threads, forward + backward of the text tower:")
    print(f"  one pass: {one:.2f} s   groups of {default_rows}: {grouped:.2f} s   ({one / grouped:.2f}x)   "
          f"largest feature difference {float((features[one_pass_rows] - features[default_rows]).abs().max()):.1e}")


if __name__ == "__main__":
    main()
