"""Prompted vs plain encoders, and prompt training vs full fine-tuning and LoRA, side by side in one run.

    python -m dbprompt_lab.benchmarks.bench_core [--model ViT-B-32] [--batch 64] [--repeats 5] [--bf16|--no-bf16]
        [--method dbprompt]

On the same random-weight backbone and the same inputs, each figure in a fresh subprocess (so its
peak memory is its own), the median of `--repeats` timed repetitions after one warm-up:
  * images/s of `dbprompt train`'s default prompts' (or `--method`'s) encode_image vs open_clip's own encode_image;
  * seconds of a one-query text encode, prompted vs the backbone's own;
  * train-step pairs/s of the default prompts (backward through the images the method's training
    backpropagates, `TrainConfig.image_backward`) vs all weights (full fine-tuning) vs LoRA (same loss, AdamW);
  * peak RSS of each.
Targets (issue "one pass"): encode >= 0.9x; one-query text <= 1.15x; prompt step >= 2x full and
>= 1x LoRA; prompt peak memory <= 0.6x full's.
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

CAPTION = "a large red circle on the left and a small blue star at the top, on a grey background"
MODES = ("own-encode", "prompted-encode", "own-text", "prompted-text", "prompt-train", "full-train", "lora-train")


def _setup(model_name: str, mode: str, device: str, prompts: str):
    """The model to time and the fraction of a step's images its training backpropagates through the tower."""
    from dbprompt.backbones import load_backbone
    from dbprompt_lab.methods import METHODS, build

    backbone = load_backbone(model_name, device=device)
    if mode in ("own-encode", "own-text"):
        return backbone, 1.0
    method = METHODS[{"full-train": "full-calibrated", "lora-train": "lora-calibrated"}.get(mode, prompts)]
    return build(method, backbone, captions=[CAPTION]).to(device), method.image_backward


def _time(fn, repeats: int, device: str) -> float:
    def timed() -> float:
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()  # warm-up
    return statistics.median(timed() for _ in range(repeats))


def measure(model_name: str, mode: str, batch: int, repeats: int, bf16: bool, device: str, prompts: str = "dbprompt") -> dict:
    """One figure, in this process; run in a fresh subprocess so peak memory is its own."""
    from dbprompt.runtime import Runtime
    from dbprompt.training.images import backward_mask, encode_for_step
    from dbprompt.training.loss import ContrastiveLoss

    runtime = Runtime(device=device, bf16=bf16)
    torch.manual_seed(0)
    model, backward = _setup(model_name, mode, device, prompts)
    model.train(mode.endswith("train"))  # as the trainer steps and as search encodes
    backbone = getattr(model, "backbone", model)
    images = torch.randn(batch, 3, *backbone.image_size, device=device)
    def tokenize(texts: list[str]) -> torch.Tensor:
        return backbone.tokenize(texts, backbone.context_length)

    one = tokenize([CAPTION]).to(device)
    count = batch
    if mode.endswith("encode"):

        def step():
            with torch.no_grad(), runtime.autocast():
                model.encode_image(images)

    elif mode.endswith("text"):
        count = 1

        def step():
            with torch.no_grad(), runtime.autocast():
                model.encode_text(one)

    else:
        ids = tokenize([CAPTION] * batch).to(device)
        loss = ContrastiveLoss(backbone.logit_scale).to(device)
        params = [p for p in model.parameters() if p.requires_grad] + list(loss.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
        generator = torch.Generator().manual_seed(0)

        def step():
            with runtime.autocast():
                backprop = backward_mask(batch, backward, generator)
                value = loss(encode_for_step(model, images, backprop), model.encode_text(ids))
            value.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    seconds = _time(step, repeats, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "seconds": seconds,
        "per_second": count / seconds,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_mb": peak,
    }


RATIOS = (
    ("prompted/own encode_image images/s (>= 0.9)", "prompted-encode", "own-encode", "per_second", 0.9, ">="),
    ("prompted/own one-query text seconds (<= 1.15)", "prompted-text", "own-text", "seconds", 1.15, "<="),
    ("prompt/full train pairs/s (>= 2)", "prompt-train", "full-train", "per_second", 2.0, ">="),
    ("prompt/LoRA train pairs/s (>= 1)", "prompt-train", "lora-train", "per_second", 1.0, ">="),
    ("prompt/full train peak memory (<= 0.6)", "prompt-train", "full-train", "peak_mb", 0.6, "<="),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="dbprompt", help="the prompts measured: a method of the comparison or of an experiment")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="measure only these")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.batch, args.repeats, args.bf16, args.device, args.method)))
        return
    print(f"{args.model}, prompts {args.method}, batch {args.batch}, {args.device}, bf16 {'on' if args.bf16 else 'off'}, torch threads {torch.get_num_threads()}")
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, "-m", "dbprompt_lab.benchmarks.bench_core", "--one", mode, "--model", args.model,
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--device", args.device, "--method", args.method,
               "--bf16" if args.bf16 else "--no-bf16"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = results[mode] = json.loads(out)
        print(f"{mode:16} {r['per_second']:9.1f} items/s  {r['seconds'] * 1000:8.1f} ms  trainable {r['trainable_params']:>12,}  peak {r['peak_mb']:8.0f} MB")
    for label, a, b, key, target, sense in RATIOS:
        if a in results and b in results:
            ratio = results[a][key] / results[b][key]
            met = ratio >= target if sense == ">=" else ratio <= target
            print(f"ratio {label}: {ratio:.2f} ({'met' if met else 'MISSED'})")


if __name__ == "__main__":
    main()
