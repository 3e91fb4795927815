"""Synthetic world generation speed, images generated and written per second, per domain.

    python -m dbprompt_lab.benchmarks.bench_world [--images 4000] [--size 64] [--dir DIR]

Runs write_database with one process and with one process per core, side by side, in a
temporary folder under DIR (default: the system's). Each image is its own PNG file, so the
file system caps the rate too: the last line writes as many files of the `visual` domain's
mean PNG size (random bytes), from one process and from one per core, for comparison. Pass
a memory file system (e.g. --dir /dev/shm) to see the generator's own speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dbprompt_lab.world import DOMAINS, write_database


def _write_files(folder: Path, names: range, size: int) -> None:
    data = os.urandom(size)
    for i in names:
        (folder / f"{i:06d}.png").write_bytes(data)


def files_per_second(folder: Path, count: int, size: int, workers: int) -> float:
    """Rate of creating `count` files of `size` bytes in one new folder, split over `workers` processes."""
    folder.mkdir()
    bounds = [count * w // workers for w in range(workers + 1)]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_files, [folder] * workers, [range(a, b) for a, b in zip(bounds, bounds[1:])], [size] * workers))
    rate = count / (time.perf_counter() - start)
    shutil.rmtree(folder)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where to write (default: the system's temporary folder)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp(dir=args.dir))
    png_bytes = 0
    try:
        for domain in DOMAINS:
            rates = {}
            for workers in (1, cores):
                out = root / f"{domain}-{workers}"
                start = time.perf_counter()
                write_database(out, args.images, domain=domain, image_size=args.size, workers=workers)
                rates[workers] = args.images / (time.perf_counter() - start)
                if domain == "visual":
                    png_bytes = sum(f.stat().st_size for f in (out / "images").iterdir()) // args.images
                shutil.rmtree(out)
            print(
                f"{domain:8} 1 process {rates[1]:7.0f} images/s   {cores} processes {rates[cores]:7.0f} images/s"
                f"   ratio {rates[cores] / rates[1]:.2f}"
            )
        raw = {w: files_per_second(root / f"raw-{w}", args.images, png_bytes, w) for w in (1, cores)}
        print(
            f"{'files':8} 1 process {raw[1]:7.0f} files/s    {cores} processes {raw[cores]:7.0f} files/s"
            f"    ({png_bytes:,} bytes each, nothing generated)"
        )
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
