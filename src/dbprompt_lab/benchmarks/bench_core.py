"""Prompted vs plain encoders and prompt vs full training, measured side by side in one run.

    python benchmarks/bench_core.py [--model ViT-B-32] [--batch 64] [--repeats 5] [--bf16|--no-bf16]

Prints, on the same random-weight backbone and the same inputs:
  * images/s of PromptedCLIP.encode_image (default deep gated prompts, and ungated ones)
    vs open_clip's own encode_image;
  * train-step pairs/s with prompts trainable vs all weights trainable (same loss, AdamW);
  * peak RSS growth of each (this process, measured with ru_maxrss in a fresh subprocess).
Each figure is the median of `--repeats` timed repetitions after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def _setup(model_name: str, mode: str):
    from dbprompt.backbones import load_backbone
    from dbprompt.methods import METHODS, build
    from dbprompt.prompts import PromptConfig
    from dbprompt.model import PromptedCLIP

    backbone = load_backbone(model_name)
    if mode == "full-train":
        return build(METHODS["full"], backbone)
    if mode == "own-encode":
        return backbone
    if mode == "ungated-encode":
        return PromptedCLIP(backbone, PromptConfig(gate=False))
    return PromptedCLIP(backbone, PromptConfig())


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model_name: str, mode: str, batch: int, repeats: int, bf16: bool) -> dict:
    """One figure, in this process; run in a fresh subprocess so peak memory is its own."""
    from dbprompt.runtime import precision
    from dbprompt.train import clip_loss

    torch.manual_seed(0)
    model = _setup(model_name, mode)
    backbone = getattr(model, "backbone", model)
    images = torch.randn(batch, 3, *backbone.image_size)
    captions = ["a large red circle on the left and a small blue star at the top, on a grey background"] * batch
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode in ("own-encode", "prompted-encode", "ungated-encode"):

        def step():
            with torch.no_grad(), precision("cpu", bf16):
                model.encode_image(images)

        seconds = _time(step, repeats)
    else:
        ids = model.tokenize(captions)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)

        def step():
            with precision("cpu", bf16):
                loss = clip_loss(model.encode_image(images), model.encode_text(ids), backbone.logit_scale)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = _time(step, repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode,
        "per_second": batch / seconds,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_rss_mb": peak / 1024,
        "rss_growth_mb": (peak - base_rss) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--modes", nargs="+", default=None, help="measure only these")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.batch, args.repeats, args.bf16)))
        return
    results = {}
    modes = ("own-encode", "prompted-encode", "ungated-encode", "prompt-train", "full-train")
    for mode in args.modes or modes:
        cmd = [sys.executable, __file__, "--one", mode, "--model", args.model, "--batch", str(args.batch), "--repeats", str(args.repeats), "--bf16" if args.bf16 else "--no-bf16"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(out)
        r = results[mode]
        print(f"{mode:16} {r['per_second']:8.1f} items/s  trainable {r['trainable_params']:>12,}  peak RSS {r['peak_rss_mb']:8.0f} MB")
    ratios = (
        ("gated prompted/own encode_image images/s", "prompted-encode", "own-encode", "per_second"),
        ("ungated prompted/own encode_image images/s", "ungated-encode", "own-encode", "per_second"),
        ("prompt/full train pairs/s", "prompt-train", "full-train", "per_second"),
        ("prompt/full train peak RSS", "prompt-train", "full-train", "peak_rss_mb"),
    )
    for label, a, b, key in ratios:
        if a in results and b in results:
            print(f"ratio {label}: {results[a][key] / results[b][key]:.2f}")


if __name__ == "__main__":
    main()
