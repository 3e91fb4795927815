"""Does validation see what the test sees? One `dbprompt` training of the method comparison,
scored after every epoch three ways: validation T2I R@1 among the 300 validation images alone,
validation as the Trainer scores it (among validation plus training images, up to
VALIDATION_GALLERY), and the 1,000-image test split (looked at here only, never to choose).

    python -m dbprompt_lab.benchmarks.validation_gallery [--shift visual] [--n 500] [--seed 0]
        [--calibrate-temperature] [--out runs/methods]

Uses (or writes) the comparison's target databases under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dbprompt.backbones import load_backbone
from dbprompt.data import Record
from dbprompt.evaluation import evaluate_models
from dbprompt.model import PromptedCLIP
from dbprompt.runtime import CPU
from dbprompt.training.config import TrainConfig
from dbprompt.training.trainer import Trainer
from dbprompt.training.validation import VALIDATION_GALLERY
from dbprompt_lab.bench import HEADLINE, BenchConfig, target_splits, train_subset
from dbprompt_lab.methods import METHODS, build


def t2i_r1(model: PromptedCLIP, records: list[Record]) -> float:
    """T2I R@1 among `records`' images alone, as the comparison's test scores."""
    return evaluate_models({"prompts": model}, records, CPU)["prompts"][HEADLINE]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shift", default="visual", choices=BenchConfig().shifts)
    ap.add_argument("--n", type=int, default=500, choices=BenchConfig().sizes)
    ap.add_argument("--seed", type=int, default=0)
    # The per-epoch table in BENCHMARKS.md was made before dbprompt train calibrated its temperature.
    ap.add_argument("--calibrate-temperature", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--out", default="runs/methods")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = BenchConfig()
    data = target_splits(Path(args.out), args.shift, cfg)
    train, val, test = train_subset(data["train"], args.n, args.seed), data["val"], data["test"]
    captions = [c for r in train for c in r.captions]
    model = build(METHODS["dbprompt"], load_backbone(cfg.model, device="cpu"), args.seed, captions)
    options = TrainConfig(
        epochs=cfg.epochs[args.n],
        batch_size=cfg.batch_size,
        seed=args.seed,
        checkpoint_every=0,
        calibrate_temperature=args.calibrate_temperature,
    )
    print(f"{args.shift} N={args.n} seed {args.seed}; T2I R@1 per epoch")
    print(f"epoch  val ({len(val)} images)  val ({min(VALIDATION_GALLERY, len(val) + len(train))} images)  test ({len(test)} images)")

    def trace(entry: dict) -> None:
        """After each epoch's validation (the Trainer's on_epoch hook): the same model on each split."""
        alone, tested = t2i_r1(model, val), t2i_r1(model, test)
        print(f"{entry['epoch']:5d}  {alone:18.1f}  {entry[HEADLINE]:18.1f}  {tested:17.1f}", flush=True)

    Trainer(model, train, val, options, CPU, progress=False, log=lambda _: None, on_epoch=trace).run()


if __name__ == "__main__":
    main()
