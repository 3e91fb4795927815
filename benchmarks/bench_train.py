"""What caching the gate's zero-shot image features saves in prompt training, side by side in one run.

    python benchmarks/bench_train.py [--model dbprompt-proxy] [--images 512] [--epochs 3] [--repeats 2]
        [--val-images 0]

Trains `dbprompt train`'s default prompts (deep, gated, vocabulary) on a synthetic source
database, with the cache on and off in alternation, and prints the wall time of whole
runs (the cache's own pass included) and the ratio. With --val-images 0 validation is off,
so only training is timed; with N > 0 each epoch is validated as `dbprompt train` does
(N images, the gallery filled up with training images), and the cache covers it too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dbprompt.backbones import load_backbone
from dbprompt.data import load_database
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import TRAIN_DEFAULTS
from dbprompt.runtime import pick_device, resolve_bf16
from dbprompt.train import TrainConfig, Trainer
from dbprompt.world import write_database


def run_seconds(model_name: str, records: list, val: list, epochs: int, cache: bool, device: str, bf16: bool) -> float:
    torch.manual_seed(0)
    captions = [c for r in records for c in r.captions]
    model = PromptedCLIP.for_captions(load_backbone(model_name, device=device), TRAIN_DEFAULTS, captions)
    cfg = TrainConfig(epochs=epochs, checkpoint_every=0, cache_zero_shot=cache)
    trainer = Trainer(model, records, val, cfg, device=device, bf16=bf16, progress=False, log=lambda _: None)
    trainer.images.batch([r.path for r in records])  # decode once outside the timing, as both runs' later epochs do
    start = time.perf_counter()
    trainer.run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dbprompt-proxy")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--val-images", type=int, default=0)
    args = parser.parse_args()
    device = pick_device(args.device)
    bf16 = resolve_bf16(device, None)
    with tempfile.TemporaryDirectory() as tmp:
        db = write_database(Path(tmp) / "db", args.images, domain="source", seed=7, image_size=64)
        records = load_database(db).records
        val = []
        if args.val_images:
            val = load_database(write_database(Path(tmp) / "val", args.val_images, domain="source", seed=8, image_size=64)).records
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for cache in (False, True):
                times[cache].append(run_seconds(args.model, records, val, args.epochs, cache, device, bf16))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    pairs = args.images * args.epochs
    print(
        f"{args.model}, {args.images} images x {args.epochs} epochs, {args.val_images} validation images, "
        f"device {device}, bf16 {bf16}, torch threads {torch.get_num_threads()}"
    )
    print(f"zero-shot recomputed every step: {off:6.1f} s  {pairs / off:6.1f} pairs/s")
    print(f"zero-shot cached once:           {on:6.1f} s  {pairs / on:6.1f} pairs/s  speed {off / on:.2f}x")


if __name__ == "__main__":
    main()
