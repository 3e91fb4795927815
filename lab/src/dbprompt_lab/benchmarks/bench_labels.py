"""Class folders with no captions (issue 25): what each method learns from labels alone.

Six shape classes in folders, `--per-class` training images each, read with the template
"a photo of a {}"; validation and test are folders of their own (other seeds), so test mAP is
class-level retrieval on images nothing trained or chose on. Every method trains through the
comparison's `run_one` (the Trainer, its multi-positive targets, epochs chosen by validation mAP).
Beside them, the ceiling of the text side alone: a linear probe (a class vector fitted per
class, cross-entropy) on the frozen backbone's image features. The folders are drawn in the look of
the model's world: `--model dbprompt-proxy-b` the broad world's at 96 px, in OUT/broad.

    python -m dbprompt_lab.benchmarks.bench_labels [--model M] [--worlds source shifted] [--methods ...] [--out runs/labels]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dbprompt.atomic import atomic_write_text
from dbprompt.data import Record, load_database
from dbprompt.metrics import LABEL_KEYS, label_metrics
from dbprompt.model import PromptedCLIP
from dbprompt.pipeline import encode_records
from dbprompt.prompts.config import PromptConfig
from dbprompt.runtime import CPU
from dbprompt_lab import proxy
from dbprompt_lab.bench import BenchConfig, for_model, home, run_one
from dbprompt_lab.methods import METHODS
from dbprompt_lab.world.folders import class_folders_once

TEMPLATE = "a photo of a {}"
SPLITS = {"train": (0, None), "val": (1, 20), "test": (2, 100)}  # split: (seed, images a class; None: --per-class)


def folders(root: Path, look: str, per_class: int, cfg: BenchConfig) -> dict[str, list[Record]]:
    """The train, validation and test folders of a look ("source" or "shifted") of cfg's world, written once."""
    out = {}
    for split, (seed, n) in SPLITS.items():
        db = class_folders_once(
            root / "data", n or per_class, seed=seed, shifted=look == "shifted", world=cfg.world, image_size=cfg.image_size
        )
        out[split] = [Record(r.key, r.path, r.captions, split) for r in load_database(db, caption_template=TEMPLATE).records]
    return out


def linear_probe(cfg: BenchConfig, data: dict[str, list[Record]], steps: int = 500) -> dict[str, float]:
    """Label metrics of class vectors fitted on the frozen image features: the text side's ceiling."""
    backbone = proxy.load_weights(cfg.model, cfg.pretrained)
    net = PromptedCLIP.for_captions(backbone, PromptConfig(), [TEMPLATE.format("x")]).eval()
    with torch.no_grad():
        train, test = (encode_records([net], data[s], CPU)[0][0] for s in ("train", "test"))
    texts = sorted({r.captions[0] for r in data["train"]})
    labels = torch.tensor([texts.index(r.captions[0]) for r in data["train"]])
    vectors = torch.zeros(len(texts), train.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([vectors], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = 30.0 * train @ torch.nn.functional.normalize(vectors, dim=-1).T
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
    return label_metrics(torch.nn.functional.normalize(vectors.detach(), dim=-1), test, texts, [r.captions for r in data["test"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", nargs="+", default=["source", "shifted"], choices=["source", "shifted"], help="looks: the world's source images, its visual shift")
    ap.add_argument("--methods", nargs="+", default=["zero-shot", "dbprompt"], choices=list(METHODS))
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=None, help="(default: dbprompt train's: 10, more for a small database)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=BenchConfig().model, help="(default: %(default)s; dbprompt-proxy-b: the broad world's look)")
    ap.add_argument("--pretrained", type=proxy.weights_file, default=None, help="the model's weights: a weights file, a pre-training checkpoint or 'random' (default: those shipped)")
    ap.add_argument("--out", default="runs/labels", help="data and runs; another world's in OUT/WORLD (default: %(default)s)")
    args = ap.parse_args()
    proxy.needs_weights(args.model, args.pretrained)
    torch.set_num_threads(1)
    n = 6 * args.per_class
    cfg = for_model(args.model, pretrained=args.pretrained, sizes=(n,), seeds=(args.seed,), epochs={n: args.epochs})
    root = home(args.out, cfg.world)
    keys = (LABEL_KEYS[0], LABEL_KEYS[2])
    epochs = args.epochs or "default"
    print(f"| world | method | test mAP | test P@10 | best epoch | (images a class: {args.per_class}, epochs: {epochs}) |")
    print("|---|---|---|---|---|---|")
    for look in args.worlds:
        data = folders(root, look, args.per_class, cfg)
        probe = linear_probe(cfg, data)
        print(f"| {look} | linear probe on frozen image features | {probe[keys[0]]:.1f} | {probe[keys[1]]:.1f} | – | |", flush=True)
        for name in args.methods:
            saved = root / "runs" / f"{look}-{args.per_class}-{epochs}-{args.seed}-{name}.json"
            if saved.exists():
                row = json.loads(saved.read_text())
            else:
                row = run_one(METHODS[name], data["train"], data["val"], data["test"], cfg, n, args.seed)
                atomic_write_text(saved, json.dumps(row, indent=1))
            m = row["metrics"]
            print(f"| {look} | {name} | {m[keys[0]]:.1f} | {m[keys[1]]:.1f} | {row.get('best_epoch', '–')} | |", flush=True)


if __name__ == "__main__":
    main()
