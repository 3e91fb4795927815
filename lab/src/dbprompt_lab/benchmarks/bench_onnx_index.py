"""`dbprompt index` end to end on PyTorch vs ONNX Runtime (fp32, int8, auto), side by side in one run.

    python -m dbprompt_lab.benchmarks.bench_onnx_index [--model ViT-B-32] [--images 384] [--queries 20]
        [--threads 2] [--workers 1] [--batch 64] [--json]

Issue 27's "done when": on open_clip ViT-B-32 with random weights and dbprompt's default prompts perturbed
from zero (bench_onnx.prompted_model), on the synthetic world's images written as an imagefolder, at
`--threads` (torch's and ONNX Runtime's intra-op threads alike) with `--workers` decoding processes:
  * images/s of `dbprompt index` as a user runs it, one fresh process per build (start, backbone, database
    read, decode, embed, calibration, FAISS, write) for runtime torch and onnx at each precision: "cold" is
    the first build into a new directory (the ONNX export, and for auto its measurement, included); "warm"
    builds the same directory again after every image's mtime moved, so every image is embedded again
    with the export the index keeps (and auto's recorded choice); torch is built the same two ways;
  * top-10 text-search agreement of each index with the torch index's over `--queries` captions of the
    database, each searched through its own runtime (|top-10 ∩ torch's top-10| / 10, mean).
Target: onnx (auto, warm) >= 2.0x torch's images/s with agreement >= 0.95. fp32 is in bf16-off PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import dbprompt
from dbprompt.backbones import RANDOM, load_backbone
from dbprompt.runtime import Runtime
from dbprompt_lab.benchmarks.bench_onnx import prompted_model
from dbprompt_lab.world import write_database

TOP = 10
PRECISIONS = ("fp32", "int8", "auto")


def _touch_all(db: Path) -> None:
    """Every image's mtime a second later: the next build embeds each image again (its export reused)."""
    for image in (db / "images").iterdir():
        st = image.stat()
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _build(db: Path, prompts: Path, out: Path, model: str, engine: str, precision: str, batch: int, workers: int,
           threads: int, log) -> float:
    """Seconds of one `dbprompt index` command, in a process of its own with `threads` threads."""
    command = [sys.executable, "-m", "dbprompt", "index", str(db), "--prompts", str(prompts), "--out", str(out),
               "--model", model, "--pretrained", RANDOM, "--batch-size", str(batch), "--workers", str(workers), "--no-progress"]
    if engine == "onnx":
        command += ["--runtime", "onnx", "--precision", precision]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    for line in (done.stdout + done.stderr).splitlines():
        log(line)
    return seconds


def _top10(index_dir: Path, backbone, runtime: Runtime, queries: list[str]) -> list[set[str]]:
    with dbprompt.open_index(index_dir, runtime=runtime, backbone=backbone) as searcher:
        return [{h.image.key for h in searcher.search(q, TOP)} for q in queries]


def run(model: str, n_images: int, n_queries: int, threads: int, workers: int, batch: int, work: Path) -> dict:
    torch.set_num_threads(threads)
    backbone = load_backbone(model, RANDOM)
    db = write_database(work / "db", n_images, image_size=backbone.image_size[0], seed=1)
    lines = [json.loads(line) for line in (db / "metadata.jsonl").read_text().splitlines()]
    captions = [c for line in lines for c in line["text"]]
    prompts = prompted_model(backbone, captions).save_prompt_file(work / "prompts.safetensors")
    step = max(1, len(lines) // n_queries)
    queries = [line["text"][0] for line in lines[::step][:n_queries]]
    logged: list[str] = []
    torch_rt = Runtime(device="cpu", bf16=False, workers=workers)
    reference: list[set[str]] = []
    rows = []
    for engine, precision in [("torch", "fp32"), *(("onnx", p) for p in PRECISIONS)]:
        out, runtime = work / f"{engine}-{precision}", torch_rt.replace(engine=engine)
        cold = _build(db, prompts, out, model, engine, precision, batch, workers, threads, logged.append)
        _touch_all(db)
        warm = _build(db, prompts, out, model, engine, precision, batch, workers, threads, logged.append)
        found = _top10(out, backbone, runtime, queries)
        reference = reference or found
        with dbprompt.open_index(out, runtime=torch_rt, backbone=backbone) as searcher:
            record = searcher.index.info.onnx
        rows.append({
            "runtime": engine, "precision": precision, "cold_s": cold, "warm_s": warm,
            "agreement_at_10": sum(len(a & b) / TOP for a, b in zip(found, reference, strict=True)) / len(queries),
            "chosen": record.get("precision"), "measured": record.get("agreement_at_10"),
        })
    return {"model": model, "images": n_images, "queries": len(queries), "threads": threads, "workers": workers,
            "batch": batch, "rows": rows, "log": logged}


def table(result: dict) -> str:
    n, ref = result["images"], result["rows"][0]
    lines = [f"{'runtime':<8}{'precision':<10}{'cold img/s':>16}{'warm img/s':>16}{'top-10 agr':>12}  chosen (int8 agr measured)"]
    for row in result["rows"]:
        cold, warm = n / row["cold_s"], n / row["warm_s"]
        chosen = f"  {row['chosen']} ({row['measured']})" if row["chosen"] else ""
        lines.append(
            f"{row['runtime']:<8}{row['precision']:<10}{cold:>8.1f} ({ref['cold_s'] / row['cold_s']:.2f}x)"
            f"{warm:>8.1f} ({ref['warm_s'] / row['warm_s']:.2f}x){row['agreement_at_10']:>12.3f}{chosen}"
        )
    lines.append(
        f"{result['model']} random weights, perturbed prompts; {n} images, {result['queries']} queries, {result['threads']} "
        f"threads, {result['workers']} decoding workers, batch {result['batch']}; each build a fresh `dbprompt index`; ratios vs torch's "
        "same column; cold: first build (export included), warm: rebuilt after every image changed (export kept)"
    )
    said = [f"log: {line}" for line in result["log"] if line.startswith(("ONNX precision", "exporting to ONNX again"))]
    return "\n".join(lines + said)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_onnx_index.") as work:
        result = run(args.model, args.images, args.queries, args.threads, args.workers, args.batch, Path(work))
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
