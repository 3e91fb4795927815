"""How far the backbone's temperature is from what a shifted database's pairs call for.

For each target of the method comparison: the untrained (zero-shot) in-batch contrastive loss
of the first 512 training pairs of epoch 0 (the pairs the Trainer calibrates on), at the
backbone's logit scale and at the one `calibrate_logit_scale` picks (where `dbprompt train`
starts), and in-batch T2I R@1, which no temperature changes. A loss far above its calibrated value is a loss that prompts
can lower without retrieving any better.

    python -m dbprompt_lab.benchmarks.temperature [--n 2000] [--seed 0] [--out runs/methods]

Uses (or writes) the comparison's target databases under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dbprompt.backbones import load_backbone
from dbprompt.pipeline import decode_batches
from dbprompt.runtime import CPU
from dbprompt.training.loss import calibrate_logit_scale, clip_loss
from dbprompt.training.trainer import CALIBRATION_PAIRS, epoch_plan
from dbprompt_lab.bench import BenchConfig, target_splits, train_subset
from dbprompt_lab.methods import METHODS, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, choices=BenchConfig().sizes)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/methods")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = BenchConfig()
    print("| shift | backbone logit scale | its loss | calibrated logit scale | its loss | in-batch T2I R@1 |")
    print("|---|---|---|---|---|---|")
    for shift in cfg.shifts:
        data = target_splits(Path(args.out), shift, cfg)
        train = train_subset(data["train"], args.n, args.seed)
        model = build(METHODS["zero-shot"], load_backbone(cfg.model, device="cpu"), args.seed).eval()
        order, captions = epoch_plan(train, args.seed, 0)
        n, b = min(CALIBRATION_PAIRS, len(order)), cfg.batch_size
        pairs = [train[i] for i in order[:n]]
        pixels = torch.cat([batch.images for batch in decode_batches(pairs, model.backbone.image_transform(), CPU)])
        with torch.no_grad():
            images = model.encode_image(pixels)
            texts = model.encode_text(model.tokenize(captions[:n]))
        batches = [(images[s : s + b], texts[s : s + b]) for s in range(0, n, b)]

        def mean_loss(log_scale: torch.Tensor) -> float:
            return sum(float(clip_loss(i, t, log_scale)) for i, t in batches) / len(batches)

        own = model.backbone.logit_scale.detach()
        calibrated = torch.tensor(calibrate_logit_scale(images, texts, b))
        r1 = sum(float(((t @ i.T).argmax(1) == torch.arange(len(i))).float().sum()) for i, t in batches) / n * 100
        print(
            f"| {shift} | {float(own.exp()):.1f} | {mean_loss(own):.2f} | {float(calibrated.exp()):.1f} "
            f"| {mean_loss(calibrated):.2f} | {r1:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
