"""The one compatibility check: prompts, indexes and backbones are only ever used with what made them.

A prompt file records the backbone it was trained on (name, weights, a fingerprint of the
weights); an index records that backbone and the sha256 of its prompt file. Every pairing goes
through `check_backbone` or `check_prompt_file`, so each refusal reads the same way.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backbones.base import BackboneAdapter


class IncompatibleError(ValueError):
    """Something used with a backbone or prompt file other than the one that made it."""


@dataclass(frozen=True)
class BackboneId:
    """Which weights: the name and weights a user gave, and a digest of the weights themselves."""

    name: str
    pretrained: str | None
    fingerprint: str

    @classmethod
    def of(cls, backbone: "BackboneAdapter") -> "BackboneId":
        return cls(backbone.name, backbone.pretrained, backbone.fingerprint())

    def __str__(self) -> str:
        return f"{self.name} ({self.pretrained or 'random'}, fingerprint {self.fingerprint})"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_backbone(source: str, expected: BackboneId, backbone: "BackboneAdapter") -> None:
    """Refuse a backbone whose weights differ from those `source` was made with."""
    if backbone.fingerprint() != expected.fingerprint:
        raise IncompatibleError(f"{source}: made with backbone {expected}; the loaded backbone is {BackboneId.of(backbone)}")


def check_prompt_file(source: str, expected_sha256: str, path: str | os.PathLike) -> None:
    """Refuse a prompt file other than the one `source` was made with."""
    sha = file_sha256(path)
    if sha != expected_sha256:
        raise IncompatibleError(
            f"{source}: made with prompt file sha256 {expected_sha256[:16]}…, not {Path(path)} ({sha[:16]}…)"
        )


