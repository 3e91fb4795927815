"""Where one run of `dbprompt-lab bench methods` spends its time, per method, side by side in one process.

    python -m dbprompt_lab.benchmarks.run_parts [--shift visual] [--n 500] [--methods dbprompt full ...]
        [--data runs/methods]

Runs the comparison's own `run_one` (same data, budgets and validation) for each method, one
thread as the comparison's jobs use, and splits its wall time into: the forward passes of the
training steps (with the loss); the rest of training (backward passes, optimizer steps,
loading the backbone and the first decode of every image); the per-epoch validation (epoch 0
included); the one-off pass before training (temperature calibration); and the final test
evaluation. The split comes from the Trainer's public `phase` hook, which the run enters around
each part; nothing the parts do is changed.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch

from dbprompt_lab import bench
from dbprompt_lab.methods import COMPARED, METHODS

# The run's phases, and the column each is counted in.
_PARTS = {"forward": "forward", "validation": "validation", "calibration": "before", "test": "test"}


def timed_parts(seconds: dict[str, float]) -> Callable[[str], ContextManager[None]]:
    """A `phase` hook that adds the time spent in each part of a run to `seconds`."""

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds[_PARTS[name]] += time.perf_counter() - start

    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shift", default="visual", choices=bench.BenchConfig().shifts)
    parser.add_argument("--n", type=int, default=500, choices=sorted(bench.BenchConfig().epochs))
    parser.add_argument("--methods", nargs="+", default=[m for m in COMPARED if m != "zero-shot"])
    parser.add_argument("--data", default="runs/methods", help="a comparison's --out (its target databases are made there if missing)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = bench.BenchConfig(device="cpu")
    data = bench.target_splits(Path(args.data), args.shift, cfg)
    train_records = bench.train_subset(data["train"], args.n, 0)
    columns = ("forward", "rest of training", "validation", "before", "test")
    print(f"{args.shift}, N = {args.n}, seed 0, {args.threads} thread(s); seconds (share of the run)")
    print(f"{'method':16} {'total':>7} " + " ".join(f"{c:>18}" for c in columns))
    for name in args.methods:
        seconds: dict[str, float] = defaultdict(float)
        start = time.perf_counter()
        bench.run_one(METHODS[name], train_records, data["val"], data["test"], cfg, args.n, 0, phase=timed_parts(seconds))
        total = time.perf_counter() - start
        seconds["rest of training"] = total - sum(seconds.values())
        print(f"{name:16} {total:7.1f} " + " ".join(f"{seconds[c]:8.1f} ({100 * seconds[c] / total:4.1f} %)" for c in columns))


if __name__ == "__main__":
    main()
