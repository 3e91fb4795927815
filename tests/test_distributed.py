"""`torchrun --nproc-per-node 2 -m dbprompt train` on CPUs (gloo): the same prompts as one process, and a
rank killed mid-run costs nothing once `--resume` is given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbprompt.cli import main
from dbprompt.data import load_database, split_records

BATCH = 8


def _args(db: Path, out: Path) -> list[str]:
    return [
        "train", str(db), "--out", str(out), "--model", "dbprompt-tiny", "--pretrained", "random", "--epochs", "3",
        "--batch-size", str(BATCH), "--no-progress", "--checkpoint-every", "1", "--workers", "0",
        "--no-bf16",  # the same arithmetic as one process: bf16 (on by itself where AMX is) rounds by batch layout
        "--keep-work",  # the checkpoints are compared below
    ]


def _torchrun(args: list[str]) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "0", "-m", "dbprompt", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(p) for p in found]


@pytest.mark.slow  # two torchrun launches of two processes each
def test_two_processes_train_what_one_does_and_a_killed_rank_resumes(tiny_db, tmp_path, one_thread):
    train = split_records(load_database(tiny_db).records)["train"]
    # Every micro-batch splits evenly over two ranks, so both runs see exactly the same batches.
    assert len(train) % BATCH % 2 == 0
    assert main(_args(tiny_db, tmp_path / "one.safetensors")) == 0

    out = tmp_path / "two.safetensors"
    run = _torchrun(_args(tiny_db, out))
    checkpoint = tmp_path / "two.safetensors.work" / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, run.communicate()[0]  # still training when one rank is killed
    ranks = _children(run.pid)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGKILL)
    log = run.communicate(timeout=120)[0]
    assert run.returncode != 0 and not out.exists(), log

    resumed = _torchrun(_args(tiny_db, out) + ["--resume"])
    log = resumed.communicate(timeout=180)[0]
    assert resumed.returncode == 0, log
    assert "resumed at epoch" in log and log.count("wrote ") == 1  # rank 0 alone reports and writes
    assert out.exists()
    # The prompts in float32 (prompt files round them to float16): each run's checkpoint keeps the best.
    one, two = (_best(tmp_path / f"{name}.safetensors.work" / "checkpoint.safetensors") for name in ("one", "two"))
    assert set(one) == set(two)
    assert max(float((one[k].double() - two[k].double()).abs().max()) for k in one) <= 1e-4


def _best(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(checkpoint)).items() if k.startswith("best/")}


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(tiny_backbone, tiny_records):
    from dbprompt.data import records_for
    from dbprompt.model import PromptedCLIP
    from dbprompt.prompts import PromptConfig
    from dbprompt.runtime import Runtime
    from dbprompt.training.config import TrainConfig
    from dbprompt.training.trainer import Trainer

    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        Trainer(
            PromptedCLIP(tiny_backbone, PromptConfig(vocab=0, visual_adapter=0)), records_for(tiny_records, "train"), [],
            TrainConfig(batch_size=8), Runtime(rank=0, world=3), progress=False,
        )
    assert torch.distributed.is_available()


@pytest.mark.slow  # an index, then one process and a torchrun launch of two
def test_two_processes_train_from_marked_negatives_what_one_does(tiny_db, tmp_path, one_thread):
    from dbprompt.marks import MarkStore, marks_path

    index = tmp_path / "tiny.index"
    assert main(["index", str(tiny_db), "--model", "dbprompt-tiny", "--pretrained", "random", "--out", str(index), "--no-progress"]) == 0
    train = split_records(load_database(tiny_db).records)["train"]
    store = MarkStore(marks_path(index))
    for query, others in zip(train[:4], (train[4:7], train[7:10], train[10:13], train[13:16])):
        for other in others:  # irrelevant to that image's caption: a negative whenever the caption is in a batch
            store.add(query.captions[0], other.key, "h", False, "p")
    store.close()
    feedback = ["--feedback", str(index)]
    assert main(_args(tiny_db, tmp_path / "one.safetensors") + feedback) == 0
    run = _torchrun(_args(tiny_db, tmp_path / "two.safetensors") + feedback)
    log = run.communicate(timeout=180)[0]
    assert run.returncode == 0, log
    one, two = (_best(tmp_path / f"{name}.safetensors.work" / "checkpoint.safetensors") for name in ("one", "two"))
    assert set(one) == set(two)
    assert max(float((one[k].double() - two[k].double()).abs().max()) for k in one) <= 1e-4
