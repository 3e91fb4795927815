"""Synthetic world generation speed, images generated and written per second, per domain.

    python benchmarks/bench_world.py [--images 4000] [--size 64]

Runs write_database with one process and with one process per core, side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from dbprompt.world import DOMAINS, write_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    root = Path(tempfile.mkdtemp())
    try:
        for domain in DOMAINS:
            rates = {}
            for workers in (1, cores):
                out = root / f"{domain}-{workers}"
                start = time.perf_counter()
                write_database(out, args.images, domain=domain, image_size=args.size, workers=workers)
                rates[workers] = args.images / (time.perf_counter() - start)
                shutil.rmtree(out)
            print(
                f"{domain:8} 1 process {rates[1]:7.0f} images/s   {cores} processes {rates[cores]:7.0f} images/s"
                f"   ratio {rates[cores] / rates[1]:.2f}"
            )
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
