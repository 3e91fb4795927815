"""Every prompt option in one dataclass, saved with the prompts so a file rebuilds its own model."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptConfig:
    # Textual prompt: `text_len` vectors right after the start token.
    text_len: int = 8
    # 1 = shallow; d > 1 replaces the prompt positions with a fresh set before each of the
    # first d layers; 0 = before every layer. Defaults: chosen on validation (BENCHMARKS.md).
    text_depth: int = 0
    # Initialise the first vectors from this phrase's token embeddings instead of noise.
    text_init: str | None = None
    # Visual prompt: `visual_len` tokens right after the class/prefix tokens.
    visual_len: int = 8
    visual_depth: int = 0
    init_std: float = 0.02
    # Residual gate: features = zero-shot + g * (prompted - zero-shot), g starting at 0, so
    # training starts exactly at zero-shot and moves away only as far as the loss pays for.
    gate: bool = True
    # Learnable offsets for the token embeddings of up to this many of the training captions'
    # tokens (those in most captions), starting at zero (0: none). Needs the training captions,
    # so it is off here and on in TRAIN_DEFAULTS.
    vocab: int = 0
    # Prompt dropout: each prompt vector and word offset is dropped with this probability
    # in a training step.
    dropout: float = 0.0
    # MaPLe-style coupling: the visual prompts are a learned linear map of the textual ones
    # (needs text_len == visual_len and equal depths).
    couple: bool = False

    def __post_init__(self) -> None:
        for name in ("text_len", "visual_len", "vocab"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("text_depth", "visual_depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: every layer), got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.couple and not (self.text_len and self.text_len == self.visual_len):
            raise ValueError(
                f"couple needs textual and visual prompts of one length, got text_len {self.text_len} "
                f"and visual_len {self.visual_len}"
            )
        if self.text_init is not None and not self.text_init.strip():
            raise ValueError("text_init must be a non-empty phrase or None")

    def replace(self, **changes) -> "PromptConfig":
        return dataclasses.replace(self, **changes)

    @property
    def kinds(self) -> list[str]:
        return [k for k, n in (("textual", self.text_len), ("visual", self.visual_len), ("vocabulary", self.vocab)) if n]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PromptConfig":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown prompt options {sorted(unknown)} (written by a newer dbprompt?)")
        return cls(**data)


# What `dbprompt train` uses unless told otherwise: chosen on validation splits (BENCHMARKS.md).
TRAIN_DEFAULTS = PromptConfig(vocab=1024)
