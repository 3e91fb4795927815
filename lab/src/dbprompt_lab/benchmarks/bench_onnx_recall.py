"""Test R@1 of a trained prompt file on PyTorch, ONNX Runtime fp32 and ONNX Runtime int8, on the comparison's targets.

    python -m dbprompt_lab.benchmarks.bench_onnx_recall [--shifts visual textual both] [--n 2000] [--seed 0] [--out runs/onnx-recall]

Issue 27 asks that the int8 image tower be the default only where it keeps test R@1 within 0.5 points and
top-10 agreement >= 0.95. For each shift: `dbprompt`'s defaults trained exactly as the comparison's run of the
same (shift, N, seed) (bench.train_best), exported with its int8 tower, and the same test split scored through
each runtime: T2I R@1 (CLIP_benchmark's definition), and the share of PyTorch's top-10 each runtime keeps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dbprompt.atomic import atomic_write_text
from dbprompt.evaluation import caption_index
from dbprompt.metrics import retrieval_metrics
from dbprompt.onnx import OnnxTowers
from dbprompt_lab.bench import HEADLINE, BenchConfig, target_splits, train_best, train_subset
from dbprompt_lab.methods import METHODS

TOP = 10


def features(model, towers: OnnxTowers | None, records, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, image) features, L2-normalised, through PyTorch (towers None) or the ONNX towers."""
    backbone, transform = model.backbone, model.backbone.image_transform()
    pixels = torch.stack([transform(Image.open(r.path).convert("RGB")) for r in records])
    ids = backbone.tokenize(texts, backbone.context_length)
    with torch.no_grad():
        if towers is None:
            return model.encode_texts(texts), model.encode_image(pixels)
        return torch.from_numpy(towers.encode_texts(ids.numpy())), torch.from_numpy(towers.encode_images(pixels.numpy()))


def top10_kept(text: torch.Tensor, image: torch.Tensor, ref_text: torch.Tensor, ref_image: torch.Tensor) -> float:
    k = min(TOP, len(image))
    mine, ref = (text @ image.T).topk(k).indices, (ref_text @ ref_image.T).topk(k).indices
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(mine, ref, strict=True)]))


def measure(cfg: BenchConfig, shift: str, n: int, seed: int, out: Path) -> list[dict]:
    """One row per runtime for `dbprompt` trained on (shift, n, seed) of `cfg`'s comparison."""
    data = target_splits(out, shift, cfg)
    model, _ = train_best(METHODS["dbprompt"], train_subset(data["train"], n, seed), data["val"], cfg, n, seed)
    model.eval()
    test = data["test"]
    texts, owner = caption_index(test)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_onnx_recall.") as work:
        manifest = model.export_onnx(Path(work) / "onnx", int8=True)
        runs = {"torch fp32": None, "onnx fp32": OnnxTowers(manifest), "onnx int8": OnnxTowers(manifest, int8=True)}
        ref = None
        for name, towers in runs.items():
            text, image = features(model, towers, test, texts)
            ref = ref or (text, image)
            r1 = retrieval_metrics(text, image, owner, (1, 5, 10))[HEADLINE]
            rows.append({"shift": shift, "n": n, "seed": seed, "runtime": name, "t2i_R@1": r1, "top10_kept": top10_kept(text, image, *ref)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shifts", nargs="+", default=["visual", "textual", "both"])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/onnx-recall", help="where the targets' images are written (once)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| shift | N | runtime | test T2I R@1 | top-10 kept of PyTorch's | (seed {args.seed}, {BenchConfig().model}) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for shift in args.shifts:
        cfg = BenchConfig(shifts=(shift,), sizes=(args.n,), seeds=(args.seed,), methods=("dbprompt",))
        for row in measure(cfg, shift, args.n, args.seed, Path(args.out)):
            print(f"| {shift} | {args.n} | {row['runtime']} | {row['t2i_R@1']:.1f} | {row['top10_kept']:.3f} | |", flush=True)
            rows.append(row)
    atomic_write_text(Path(args.out) / f"rows-{args.n}-{args.seed}.json", json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
