"""Prompt files: safetensors with the prompts and enough metadata to rebuild and check the model.

safetensors holds raw tensors and string metadata only, so opening a file a user hands
in never runs code (no pickle anywhere).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .atomic import atomic_write_bytes
from .compat import BackboneId
from .prompts.config import PromptConfig

FORMAT = "dbprompt-prompts/2"


class PromptFileError(ValueError):
    """A prompt file that cannot be read, or does not belong to the backbone at hand."""


@dataclass
class PromptFile:
    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    config: PromptConfig

    @property
    def backbone(self) -> str:
        return self.metadata["backbone"]

    @property
    def pretrained(self) -> str | None:
        return self.metadata.get("pretrained") or None

    @property
    def fingerprint(self) -> str:
        return self.metadata["backbone_fingerprint"]

    @property
    def backbone_id(self) -> BackboneId:
        return BackboneId(self.backbone, self.pretrained, self.fingerprint)

    @property
    def parameter_count(self) -> int:
        return sum(t.numel() for t in self.tensors.values() if t.is_floating_point())

    @property
    def extra(self) -> dict:
        return json.loads(self.metadata.get("extra", "{}"))


def write_prompt_file(
    path: str | Path, tensors: dict[str, torch.Tensor], config: PromptConfig, bb: BackboneId, extra: dict | None = None
) -> Path:
    """Write prompt tensors atomically with what rebuilds and checks their model; `extra`: any JSON-able summary."""
    path = Path(path)
    tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "dbprompt_version": __version__,
        "backbone": bb.name,
        "pretrained": bb.pretrained or "",
        "backbone_fingerprint": bb.fingerprint,
        "prompt_config": config.to_json(),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))
    return path


def read_prompt_file(path: str | Path) -> PromptFile:
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        metadata = _read_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise PromptFileError(f"{path}: not a dbprompt prompt file (not valid safetensors: {exc})") from None
    if metadata.get("format") != FORMAT:
        raise PromptFileError(f"{path}: not a {FORMAT} prompt file (format {metadata.get('format')!r})")
    missing = {"backbone", "backbone_fingerprint", "prompt_config"} - set(metadata)
    if missing:
        raise PromptFileError(f"{path}: metadata lacks {sorted(missing)}")
    try:
        config = PromptConfig.from_json(metadata["prompt_config"])
    except (ValueError, TypeError) as exc:
        raise PromptFileError(f"{path}: bad prompt config: {exc}") from None
    return PromptFile(path, tensors, metadata, config)


def _read_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return header.get("__metadata__", {}) or {}
