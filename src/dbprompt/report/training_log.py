"""`dbprompt train --log-dir DIR`: each epoch's validation scores and loss as CSV and TensorBoard scalars.

Fed by the Trainer's `on_epoch` callback, so the rows appear while training runs (`tail -f
DIR/history.csv`, `tensorboard --logdir DIR`). A resumed run appends.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

# CSV columns, and the TensorBoard tag of each entry key.
COLUMNS = ("epoch", "train_loss", "val_score", "val_t2i_R@1", "val_i2t_R@1", "time")
TAGS = {
    "train_loss": "train/loss",
    "val_score": "val/score",
    "clip_benchmark/t2i_R@1": "val/t2i_R@1",
    "clip_benchmark/i2t_R@1": "val/i2t_R@1",
}


class TrainingLog:
    """A callable for `Trainer(on_epoch=...)` that writes DIR/history.csv and TensorBoard event files."""

    def __init__(self, log_dir: str | Path, *, resume: bool = False):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.dir = Path(log_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"--log-dir {self.dir}: exists and is not a directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "history.csv"
        append = resume and path.exists()
        self._file = open(path, "a" if append else "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        if not append:
            self._csv.writerow(COLUMNS)
            self._file.flush()
        self._writer = SummaryWriter(log_dir=str(self.dir))

    def __call__(self, entry: dict[str, Any]) -> None:
        epoch = int(entry["epoch"])
        row = [epoch, entry.get("train_loss"), entry.get("val_score")]
        row += [entry.get("clip_benchmark/t2i_R@1"), entry.get("clip_benchmark/i2t_R@1"), round(time.time(), 3)]
        self._csv.writerow(["" if v is None else v for v in row])
        self._file.flush()
        for key, tag in TAGS.items():
            if entry.get(key) is not None:
                self._writer.add_scalar(tag, float(entry[key]), epoch)
        self._writer.flush()

    def close(self) -> None:
        self._file.close()
        self._writer.close()
    def __enter__(self) -> "TrainingLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
