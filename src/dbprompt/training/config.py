"""Training options: one dataclass whose fields carry their help text; `dbprompt train`'s flags are built from it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..options import option

HEADLINE = "clip_benchmark/t2i_R@1"  # what training selects its epoch on (validation), and logs
# Without --epochs: this many passes, or more where a small database makes fewer than MIN_STEPS optimizer steps
# (a few dozen marked images are one step a pass: ten steps leave the prompts near where they started).
DEFAULT_EPOCHS, MIN_STEPS = 10, 100
LAST_EPOCH = "last epoch"  # `selected_by` where validation was too small to choose an epoch


@dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = option(
        None, f"passes over the training images (default: {DEFAULT_EPOCHS}, or more for a small database: as many as make {MIN_STEPS} optimizer steps)"
    )
    batch_size: int = option(64, "image-caption pairs per step (the contrastive loss's negatives)")
    lr: float = option(1e-2, "peak learning rate (chosen on validation with the image adapters, BENCHMARKS.md)")
    weight_decay: float = option(0.0, "AdamW weight decay of matrices (never of gates or the temperature)")
    warmup_fraction: float = option(0.1, "fraction of steps of linear warm-up before the cosine decay", flag="--warmup")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    seed: int = option(0, "seed of the prompts' initialisation, the epochs' order and caption choice")
    checkpoint_every: int = option(50, "optimizer steps between checkpoints (0: only at epoch ends)")
    image_cache_mb: int = option(
        2048,
        "memory for the training and validation images kept between epochs: what the frozen image tower computes "
        "when nothing inside it trains, else decoded pixels (the rest is decoded each epoch)",
    )
    image_backward: float = option(
        0.375,
        "fraction of each step's images whose features backpropagate into the image tower, drawn afresh every "
        "step; the rest still count in the loss as positives and negatives (1: all). Backward through the tower "
        "costs about what its forward does, so this is what makes a step cheap (BENCHMARKS.md)",
    )
    calibrate_temperature: bool = option(
        True,
        "train the loss's temperature from the value that fits the untrained model on this database, "
        "not the backbone's (which is far too sharp for pairs it matches poorly)",
    )

    def __post_init__(self) -> None:
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 2 or self.grad_accum < 1:
            raise ValueError("epochs >= 1, batch_size >= 2 and grad_accum >= 1 are required")
        if self.lr <= 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("lr must be > 0 and warmup_fraction in [0, 1)")
        if not 0 < self.image_backward <= 1:
            raise ValueError(f"image_backward must be in (0, 1], got {self.image_backward}")
        if self.checkpoint_every < 0 or self.image_cache_mb < 0:
            raise ValueError("checkpoint_every and image_cache_mb must be >= 0")

    def epochs_for(self, steps_per_epoch: int) -> int:
        """The passes a run makes: --epochs, else DEFAULT_EPOCHS or as many as make MIN_STEPS steps."""
        return self.epochs or max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / max(1, steps_per_epoch)))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
