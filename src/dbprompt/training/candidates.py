"""Several trainings of one database, validation keeping the best: how `--anchor 0 32` chooses."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..data.records import Record
from ..model import PromptedCLIP
from .config import TrainConfig
from .trainer import Trainer, TrainResult


def train_candidates(
    build: Callable[[], PromptedCLIP],
    train_records: Sequence[Record],
    val_records: Sequence[Record],
    configs: Sequence[TrainConfig],
    *,
    work_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    **trainer_options,
) -> tuple[PromptedCLIP, TrainResult, TrainConfig]:
    """Train a fresh model per config and keep the one validation scores best (ties: the earlier).

    Each candidate checkpoints in its own work subdirectory, so a resumed run skips those done.
    `trainer_options` go to each Trainer (runtime, progress, skip_bad, ...); an `on_epoch` callback
    gets each entry with the candidate's number (1, 2, ...) under "candidate".
    """
    if not configs:
        raise ValueError("no training configuration to try")
    if not val_records and len(configs) > 1:
        log("no validation split to choose with: training only the first candidate")
        configs = configs[:1]
    best: tuple[PromptedCLIP, TrainResult, TrainConfig] | None = None
    on_epoch = trainer_options.pop("on_epoch", None)
    for i, cfg in enumerate(configs):
        sub = Path(work_dir) / f"candidate-{i}" if work_dir and len(configs) > 1 else work_dir
        if len(configs) > 1:
            log(f"candidate {i + 1}/{len(configs)}: lr {cfg.lr:g}, anchor {cfg.anchor:g}")
        tagged = None if on_epoch is None else (lambda entry, n=i + 1: on_epoch(entry | {"candidate": n}))
        trainer = Trainer(build(), train_records, val_records, cfg, work_dir=sub, log=log, on_epoch=tagged, **trainer_options)
        result = trainer.run(resume=resume)
        trainer.restore_best()
        if best is None or result.best_score > best[1].best_score:
            best = (trainer.model, result, cfg)
    return best
