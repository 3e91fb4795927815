"""Every prompt option in one dataclass, saved with the prompts so a file rebuilds its own model.

Its defaults are `dbprompt train`'s, chosen on validation splits (BENCHMARKS.md); the CLI's flags
are built from these fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..options import option


@dataclass(frozen=True)
class PromptConfig:
    text_len: int = option(8, "textual prompt vectors, right after the start token (0: none)")
    text_depth: int = option(0, "layers with their own textual prompts (1: shallow, 0: every layer)")
    text_init: str | None = option(None, 'initialise the textual prompt from a phrase, e.g. "a photo of a"')
    visual_len: int = option(8, "visual prompt tokens, right after the class token (0: none)")
    visual_depth: int = option(0, "layers with their own visual prompts (1: shallow, 0: every layer)")
    init_std: float = option(0.02, "standard deviation of the prompts' random initialisation", cli=False)
    gate: bool = option(
        True,
        "gated key/value prompts: each layer's attention to its prompts is scaled by a per-head gate that "
        "starts at 0, so training starts exactly at zero-shot, in one pass (off: prompts inserted among the "
        "tokens, as CoOp and VPT do)",
    )
    text_norm: bool = option(False, "learn offsets to every LayerNorm's scale and shift in the text tower, from zero")
    visual_norm: bool = option(False, "learn offsets to every LayerNorm's scale and shift in the image tower, from zero")
    visual_adapter: int = option(
        16, "rank of a bottleneck adapter beside every image block's MLP, from zero: what adapts the images (0: none)"
    )
    visual_readout: int = option(
        0,
        "rank of a readout beside the image tower, from zero: it reads every block's output tokens and corrects "
        "the tower's output, so training never backpropagates through the tower (about 3x faster with "
        "--visual-adapter 0 --visual-len 0; less accurate where the images differ, BENCHMARKS.md) (0: none)",
    )
    readout_tokens: bool = option(True, "the image readout reads every token of each layer through a learned pooling (off: only the summary token)")
    visual_start: int = option(
        0,
        "image layers before this one keep the backbone's own computation (visual prompts, adapters and norm "
        "offsets act from it on); training then backpropagates only through the later layers",
    )
    vocab: int = option(
        1024,
        "tune the token embeddings of up to this many of the training captions' word pieces (those in most "
        "captions), starting at zero-shot (0: none)",
    )
    dropout: float = option(
        0.0, "drop each prompt vector and word offset with this probability in a training step", flag="--prompt-dropout"
    )
    couple: bool = option(
        False, "MaPLe-style: derive the visual prompts from the textual ones by a learned linear map (same length and depth)"
    )

    def __post_init__(self) -> None:
        for name in ("text_len", "visual_len", "vocab", "visual_adapter", "visual_readout", "visual_start"):
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
        if self.couple and self.visual_start:
            raise ValueError("couple maps the textual prompts onto the image layers one by one: it needs visual_start 0")
        if self.text_init is not None and not self.text_init.strip():
            raise ValueError("text_init must be a non-empty phrase or None")

    @classmethod
    def none(cls) -> "PromptConfig":
        """No prompts at all: the backbone's zero-shot model through the same code path."""
        return cls(text_len=0, visual_len=0, vocab=0, text_norm=False, visual_norm=False, visual_adapter=0, visual_readout=0)

    def replace(self, **changes) -> "PromptConfig":
        return dataclasses.replace(self, **changes)

    @property
    def starts_at_zero_shot(self) -> bool:
        """Whether untrained, these prompts rank exactly as the backbone does (inserted prompts do not)."""
        return self.gate or not (self.text_len or self.visual_len)

    @property
    def kinds(self) -> list[str]:
        parts = (
            ("textual", self.text_len), ("visual", self.visual_len), ("vocabulary", self.vocab),
            ("text norms", self.text_norm), ("image norms", self.visual_norm), ("image adapters", self.visual_adapter),
            ("image readout", self.visual_readout),
        )
        return [k for k, n in parts if n]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PromptConfig":
        """Options a file's dbprompt version did not have yet read as off (vocabulary: 0)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the prompt config is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown prompt options {sorted(unknown)} (written by a newer dbprompt?)")
        return cls(**({"vocab": 0, "text_norm": False, "visual_norm": False, "visual_adapter": 0, "visual_readout": 0, "visual_start": 0}
                     | data))
