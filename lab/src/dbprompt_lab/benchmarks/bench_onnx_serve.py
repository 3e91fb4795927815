"""`dbprompt serve IDX --runtime onnx` (no torch imported) vs `dbprompt serve IDX` (PyTorch), side by side in one run.

    python -m dbprompt_lab.benchmarks.bench_onnx_serve [--model dbprompt-proxy] [--images 500] [--latency-queries 100]
        [--json]

Issue 27's "done when" (item 3): one index of `--images` synthetic images (the lab's world, as an imagefolder),
built with `--runtime onnx` (dbprompt's default prompts perturbed from zero, bench_onnx.prompted_model), is
served by each server in a fresh process, one after the other, each measured for:
  * start: seconds from launching the process until GET /api/databases answers (import, index, towers or backbone);
  * RSS: the server process's resident memory after 20 queries (16 text, 4 image uploads);
  * text latency: p50 and p90 wall ms of 100 one-query text searches over HTTP, each a new text (no cache hit).
Target: onnx start <= 2 s, its RSS <= 0.5x PyTorch's, its text p50 <= 1.0x PyTorch's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import psutil

RSS_TEXT, RSS_IMAGES = 16, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return answer.read()


def _upload(url: str, image: Path) -> bytes:
    boundary = "dbpromptbench"
    body = io.BytesIO()
    body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'.encode())
    body.write(b"Content-Type: image/png\r\n\r\n" + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(url, body.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.read()


def measure(index: Path, engine: str, texts: list[str], images: list[Path], n_latency: int) -> dict:
    """One server of `index` on `engine`, launched fresh: its start seconds, RSS after 20 queries, text latency."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}/api/databases"
    command = [sys.executable, "-m", "dbprompt", "serve", str(index), "--port", str(port), "--runtime", engine]
    start = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"{' '.join(command)} exited: {server.stderr.read().decode()[-2000:]}")
            try:
                _get(base)
                break
            except OSError:
                time.sleep(0.02)
        started = time.perf_counter() - start
        search = f"{base}/{index.name}/search"
        for text in texts[:RSS_TEXT]:
            _get(f"{search}?{urllib.parse.urlencode({'q': text, 'k': 10})}")
        for image in images[:RSS_IMAGES]:
            _upload(f"{search}/image?k=10", image)
        rss = psutil.Process(server.pid).memory_info().rss
        latencies = []
        for i in range(n_latency):  # each text new to the server: its query cache never answers
            query = urllib.parse.urlencode({"q": f"{texts[i % len(texts)]} {i}", "k": 10})
            begin = time.perf_counter()
            _get(f"{search}?{query}")
            latencies.append(time.perf_counter() - begin)
        torch_loaded = _torch_loaded(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    ms = np.asarray(latencies) * 1000
    return {"engine": engine, "start_s": started, "rss_mb": rss / 2**20, "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "torch_mapped": torch_loaded}


def _torch_loaded(pid: int) -> bool:
    """Whether the server process has torch's library mapped (it imported torch)."""
    return any("libtorch" in Path(m.path).name for m in psutil.Process(pid).memory_maps())


def run(model: str, n_images: int, n_latency: int, work: Path) -> dict:
    import dbprompt
    from dbprompt.backbones import load_backbone
    from dbprompt.runtime import Runtime
    from dbprompt_lab.benchmarks.bench_onnx import prompted_model
    from dbprompt_lab.world import write_database

    backbone = load_backbone(model)
    db = write_database(work / "db", n_images, image_size=backbone.image_size[0], seed=1)
    lines = [json.loads(line) for line in (db / "metadata.jsonl").read_text().splitlines()]
    captions = [c for line in lines for c in line["text"]]
    prompts = prompted_model(backbone, captions).save_prompt_file(work / "prompts.safetensors")
    index = work / "photos"
    dbprompt.build_index(db, prompts, index, backbone=backbone, runtime=Runtime(engine="onnx"), progress=False, log=lambda _: None)
    texts = [line["text"][0] for line in lines]
    images = sorted((db / "images").iterdir())[:RSS_IMAGES]
    rows = [measure(index, engine, texts, images, n_latency) for engine in ("torch", "onnx")]
    info = json.loads((index / "manifest.json").read_text())
    return {"model": model, "images": n_images, "latency_queries": n_latency, "precision": info["onnx"].get("precision"),
            "cpus": os.cpu_count(), "rows": rows}


def table(result: dict) -> str:
    ref = result["rows"][0]
    lines = [f"{'server':<8}{'start s':>14}{'RSS MB':>16}{'text p50 ms':>20}{'p90 ms':>9}  torch loaded"]
    for row in result["rows"]:
        lines.append(
            f"{row['engine']:<8}{row['start_s']:>6.2f} ({row['start_s'] / ref['start_s']:.2f}x){row['rss_mb']:>8.0f} "
            f"({row['rss_mb'] / ref['rss_mb']:.2f}x){row['p50_ms']:>11.1f} ({row['p50_ms'] / ref['p50_ms']:.2f}x)"
            f"{row['p90_ms']:>9.1f}  {row['torch_mapped']}"
        )
    lines.append(
        f"{result['model']}, perturbed default prompts; one index of {result['images']} images built with --runtime onnx "
        f"(image tower {result['precision']}); each server a fresh `dbprompt serve` process; RSS after {RSS_TEXT} text + "
        f"{RSS_IMAGES} image queries; latency over {result['latency_queries']} new texts via HTTP; {result['cpus']} CPUs; "
        "ratios vs torch's. Target: onnx start <= 2 s, RSS <= 0.5x, p50 <= 1.0x"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dbprompt-proxy")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_onnx_serve.") as work:
        result = run(args.model, args.images, args.latency_queries, Path(work))
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
