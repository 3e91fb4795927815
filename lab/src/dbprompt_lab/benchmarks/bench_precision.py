"""Which precision and attention kernel train fastest on this machine, side by side in one run.

    python -m dbprompt_lab.benchmarks.bench_precision [--model dbprompt-proxy] [--batch 128] [--repeats 5]

Times one training step (forward, backward, AdamW) of full fine-tuning and of
textual+visual prompt tuning under: fp32; bf16 autocast with the default SDPA kernel;
bf16 autocast with the math SDPA kernel (what `Runtime.autocast` uses on a CPU). Prints
pairs/s and each ratio against fp32, plus what the CPU reports (AMX tiles, AVX512-BF16),
which decides dbprompt's default.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dbprompt.backbones import RANDOM, load_backbone
from dbprompt.model import PromptedCLIP
from dbprompt.runtime import bf16_supported
from dbprompt.training.loss import clip_loss
from dbprompt_lab.methods import METHODS, build

CAPTION = "a large red circle on the left and a small blue star at the top, on a grey background"
SETTINGS = {
    "fp32": (False, None),
    "bf16 default SDPA": (True, None),
    "bf16 math SDPA": (True, SDPBackend.MATH),
}


def step_time(
    model: PromptedCLIP, images: torch.Tensor, ids: torch.Tensor, bf16: bool, kernel: SDPBackend | None, repeats: int
) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    scale = model.backbone.logit_scale

    def step() -> None:
        with contextlib.ExitStack() as stack:
            if bf16:
                stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            if kernel is not None:
                stack.enter_context(sdpa_kernel([kernel]))
            loss = clip_loss(model.encode_image(images), model.encode_text(ids), scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dbprompt-proxy")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    print(f"CPU: AMX tiles {amx}, AVX512-BF16 {avx}; dbprompt's bf16 default here: {bf16_supported('cpu')}")
    for method in ("textual+visual", "full"):
        torch.manual_seed(0)
        model = build(METHODS[method], load_backbone(args.model, RANDOM))
        images = torch.randn(args.batch, 3, *model.backbone.image_size)
        ids = model.tokenize([CAPTION] * args.batch)
        base = None
        for name, (bf16, kernel) in SETTINGS.items():
            seconds = step_time(model, images, ids, bf16, kernel, args.repeats)
            base = base or seconds
            print(f"{method:15} {name:18} {args.batch / seconds:7.1f} pairs/s  speed vs fp32 {base / seconds:5.2f}x")


if __name__ == "__main__":
    main()
