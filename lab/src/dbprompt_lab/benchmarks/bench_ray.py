"""Embedding throughput on Ray (1 and 2 actors) vs today's single process, side by side in one run.

    python -m dbprompt_lab.benchmarks.bench_ray [--images 2000] [--model ViT-B-32] [--part 128] [--batch 32]

Writes a synthetic webdataset of `--images` images (64 px, 100 per shard) and a prompt file with
`dbprompt train`'s default prompts on `--model` (random weights: the speed does not depend on
them), then builds a fresh index three times in this process:
  * one process, `--workers 1` (today's default on 2 cores: one decoding process beside the model);
  * `--ray` with 1 actor, and with 2 actors, on one local Ray instance of all cores, started before
    the clock (each run still starts its own actors: the "end to end" figures include that).
"steady" counts the images checkpointed after the first round (one part per worker), over the time
from that round's end to the last part: the rate once the actors (or the decoding worker) are
running, which a full-size run approaches (give it many parts per worker). The one process uses
torch's own threads (all cores, unless OMP_NUM_THREADS says otherwise), each actor one.
Targets (issue 17): ray 2 vs 1 >= 1.6x, ray 2 vs one process >= 0.9x.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from dbprompt.backbones import load_backbone
from dbprompt.index import build_index
from dbprompt.index.distributed import RayOptions, ray_session
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime
from dbprompt_lab.world import write_database
from dbprompt_lab.world.shards import write_webdataset


def measure(shards: Path, prompts: Path, out: Path, backbone, args, ray: RayOptions | None) -> tuple[float, float]:
    """(end-to-end, steady) images/s of one fresh build; steady skips the first round (a part per worker)."""
    runtime = Runtime.resolve("cpu", workers=1)
    seen: list[tuple[float, int]] = []  # (time, images) of each checkpoint the build writes
    start = time.perf_counter()
    build_index(
        shards, prompts, out, backbone=backbone, runtime=runtime, batch_size=args.batch, checkpoint_every=args.part,
        progress=False, ray=ray, kind="exact", on_checkpoint=lambda images: seen.append((time.perf_counter(), images)),
    )
    total = time.perf_counter() - start
    first = ray.workers if ray is not None and ray.workers else 1
    steady = sum(n for _, n in seen[first:]) / (seen[-1][0] - seen[first - 1][0]) if len(seen) > first else float("nan")
    return args.images / total, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--part", type=int, default=128, help="images per Ray part and per checkpoint")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dir", default=None, help="where to write (default: the system's temporary folder)")
    args = parser.parse_args()
    backbone = load_backbone(args.model, "random")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        db = write_database(root / "db", args.images, seed=0, image_size=64)
        shards = write_webdataset(db, root / "shards", per_shard=100)
        captions = [json.loads(line)["text"][0] for line in (db / "metadata.jsonl").read_text().splitlines()[:200]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = PromptedCLIP.for_captions(backbone, PromptConfig(), captions)
        prompts = model.save_prompt_file(root / "prompts.safetensors")
        rates = {"one process": measure(shards, prompts, root / "single", backbone, args, None)}
        with ray_session(RayOptions(num_cpus=os.cpu_count())):
            for workers in (1, 2):
                rates[f"ray {workers}"] = measure(shards, prompts, root / f"ray{workers}", backbone, args, RayOptions(workers=workers))
    print(
        f"{args.images} images, {args.model}, parts of {args.part}, batches of {args.batch}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads in one process"
    )
    print(f"{'':12} {'end to end':>12} {'steady':>12}")
    for name, (end, steady) in rates.items():
        print(f"{name:12} {end:8.1f} img/s {steady:8.1f} img/s")
    for label, a, b in (("ray 2 / ray 1", "ray 2", "ray 1"), ("ray 2 / one process", "ray 2", "one process"), ("ray 1 / one process", "ray 1", "one process")):
        print(f"{label:22} {rates[a][0] / rates[b][0]:5.2f}x end to end  {rates[a][1] / rates[b][1]:5.2f}x steady")


if __name__ == "__main__":
    main()
