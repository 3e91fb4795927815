"""How long the CLI takes to answer `--help`, each command in a fresh process.

    python -m dbprompt_lab.benchmarks.bench_startup [--repeats 5]

Prints the median and max wall seconds per command line. The target is under 2 s: building
the parser imports no torch, open_clip or FAISS (tests/test_structure.py checks that too).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

COMMANDS = (["--help"], ["train", "--help"], ["search", "--help"], ["info", "--help"], ["serve", "--help"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("dbprompt")
    if exe is None:
        raise SystemExit("the dbprompt console script is not on PATH (activate the virtual environment)")
    for argv in COMMANDS:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([exe, *argv], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        verdict = "met" if statistics.median(times) < 2.0 else "MISSED"
        print(f"dbprompt {' '.join(argv):16} median {statistics.median(times):.2f} s  max {max(times):.2f} s  (< 2 s: {verdict})")


if __name__ == "__main__":
    main()
