"""Load test: many clients querying `dbprompt serve` at once, over real HTTP on 127.0.0.1 only.

Builds a synthetic database, a prompt file on the shipped proxy backbone and its index in a
temporary folder, starts `python -m dbprompt serve` as a subprocess bound to 127.0.0.1, then
runs --clients threads of --queries text searches each, --rounds times. Every query is distinct
(the server's text cache never helps). Reports errors, latency p50/p99 and the server's resident
memory before and after each round (a leak keeps growing round after round; warm-up does not).
Bounded: every request has a timeout and the run a deadline.

    python -m dbprompt_lab.benchmarks.load_test [--clients 50] [--queries 200] [--rounds 2] [--images 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"  # loopback only: nothing leaves the machine


def build_index(root: Path, images: int) -> tuple[Path, list[str]]:
    """A synthetic database indexed through a prompt file on dbprompt-proxy; returns the index and captions."""
    from dbprompt.backbones import load_backbone
    from dbprompt.data import load_database
    from dbprompt.index import build_index as build
    from dbprompt.model import PromptedCLIP
    from dbprompt.prompts import PromptConfig
    from dbprompt_lab.world import write_database

    db = write_database(root / "db", images, seed=0, image_size=64)
    captions = [c for r in load_database(db).records for c in r.captions]
    backbone = load_backbone("dbprompt-proxy")
    prompts = PromptedCLIP.for_captions(backbone, PromptConfig(), captions).save_prompt_file(root / "p.safetensors")
    build(db, prompts, root / "index", backbone=backbone, progress=False)
    return root / "index", captions


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def wait_ready(base: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(f"{base}/api/databases", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s")


def run_clients(base: str, queries: list[list[str]], deadline: float) -> tuple[list[float], list[str]]:
    """Each client sends its queries one after another; latencies in seconds and error messages."""

    def client(mine: list[str]) -> tuple[list[float], list[str]]:
        took, errors = [], []
        with httpx.Client(base_url=base, timeout=60) as http:
            for q in mine:
                if time.monotonic() > deadline:
                    errors.append("not sent: past the deadline")
                    continue
                start = time.perf_counter()
                try:
                    response = http.get("/api/databases/index/search", params={"q": q, "k": 10})
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                took.append(time.perf_counter() - start)
                if response.status_code != 200 or len(response.json()["results"]) != 10:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
        return took, errors

    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        results = list(pool.map(client, queries))
    return [t for r in results for t in r[0]], [e for r in results for e in r[1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--queries", type=int, default=200, help="queries per client")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every client's queries, memory read after each")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--deadline", type=float, default=1800, help="seconds before unsent queries count as errors")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index, captions = build_index(Path(tmp), args.images)
        port = free_port()
        base = f"http://{HOST}:{port}"
        command = [sys.executable, "-m", "dbprompt", "serve", str(index), "--host", HOST, "--port", str(port), "--workers", "0"]
        with open(Path(tmp) / "server.log", "w") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_ready(base, server, timeout=300)
                memory = [rss_mb(server.pid)]
                took, errors, start = [], [], time.monotonic()
                for round_ in range(args.rounds):
                    # Distinct queries: a caption of the database with the query's number, so no cache helps.
                    first = round_ * args.clients * args.queries
                    queries = [
                        [f"{captions[(first + c * args.queries + i) % len(captions)]} #{first + c * args.queries + i}" for i in range(args.queries)]
                        for c in range(args.clients)
                    ]
                    round_took, round_errors = run_clients(base, queries, start + args.deadline)
                    took, errors = took + round_took, errors + round_errors
                    memory.append(rss_mb(server.pid))
                wall = time.monotonic() - start
            finally:
                server.terminate()
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
    p50, p99 = np.percentile(np.array(took) * 1000, [50, 99]) if took else (float("nan"), float("nan"))
    result = {
        "clients": args.clients, "queries_per_client": args.queries, "rounds": args.rounds, "images": args.images,
        "requests": args.clients * args.queries * args.rounds, "errors": len(errors), "first_errors": errors[:5],
        "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1), "wall_s": round(wall, 1),
        "requests_per_s": round(len(took) / wall, 1), "server_rss_mb": [round(m, 1) for m in memory],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['requests']} requests ({args.rounds} x {args.clients} clients x {args.queries}), "
            f"{result['errors']} errors; latency p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; "
            f"{result['requests_per_s']} req/s; server RSS before and after each round "
            f"{' -> '.join(map(str, result['server_rss_mb']))} MiB ({result['machine']})"
        )
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
