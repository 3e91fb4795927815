"""The options of dbprompt's prompt method in one dataclass, saved with the prompts so a file rebuilds its own model.

Its defaults are `dbprompt train`'s, chosen on validation splits (BENCHMARKS.md); the CLI's flags
are built from these fields. Options that lost on validation were removed (format-2 prompt files
that used one are refused by name: `storage.FORMAT_2_REMOVED`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..options import option


@dataclass(frozen=True)
class PromptConfig:
    text_len: int = option(
        8,
        "gated textual prompt vectors per layer: keys and values each layer's attention also reads, behind a "
        "per-head gate that starts at 0, so training starts exactly at zero-shot (0: none)",
    )
    text_depth: int = option(0, "layers with their own textual prompts (1: the first only, 0: every layer)")
    visual_len: int = option(8, "gated visual prompt vectors per layer, as --text-len on the image tower (0: none)")
    visual_depth: int = option(0, "layers with their own visual prompts (1: the first only, 0: every layer)")
    init_std: float = option(0.02, "standard deviation of the prompts' random initialisation", cli=False)
    visual_adapter: int = option(
        16, "rank of a bottleneck adapter beside every image block's MLP, from zero: what adapts the images (0: none)"
    )
    vocab: int = option(
        1024,
        "tune the token embeddings of up to this many of the training captions' word pieces (those in most "
        "captions), starting at zero-shot (0: none)",
    )

    def __post_init__(self) -> None:
        for name in ("text_len", "visual_len", "vocab", "visual_adapter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("text_depth", "visual_depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: every layer), got {getattr(self, name)}")

    @classmethod
    def none(cls) -> "PromptConfig":
        """No prompts at all: the backbone's zero-shot model through the same code path."""
        return cls(text_len=0, visual_len=0, vocab=0, visual_adapter=0)

    def replace(self, **changes) -> "PromptConfig":
        return dataclasses.replace(self, **changes)

    @property
    def kinds(self) -> list[str]:
        parts = (("textual", self.text_len), ("visual", self.visual_len), ("vocabulary", self.vocab), ("image adapters", self.visual_adapter))
        return [k for k, n in parts if n]
