"""Prompt files: safetensors with the prompts and enough metadata to rebuild and check the model.

safetensors holds raw tensors and string metadata only, so opening a file a user hands
in never runs code (no pickle anywhere).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .atomic import atomic_write_bytes
from .backbones import BackboneAdapter, load_backbone
from .model import PromptedCLIP
from .prompts import PromptConfig

FORMAT = "dbprompt-prompts/1"
VOCABULARY_IDS = "text_vocab.ids"


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
    def parameter_count(self) -> int:
        return sum(t.numel() for t in self.tensors.values() if t.is_floating_point())

    @property
    def extra(self) -> dict:
        return json.loads(self.metadata.get("extra", "{}"))


def save_prompt_file(path: str | Path, model: PromptedCLIP, extra: dict | None = None) -> Path:
    """Write the model's prompts atomically; `extra` is any JSON-able summary (e.g. training results)."""
    path = Path(path)
    tensors = {
        k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.prompt_state_dict().items()
    }
    bb = model.backbone
    metadata = {
        "format": FORMAT,
        "dbprompt_version": __version__,
        "backbone": bb.name,
        "pretrained": bb.pretrained or "",
        "backbone_fingerprint": bb.fingerprint(),
        "prompt_config": model.config.to_json(),
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
        raise PromptFileError(f"{path}: not a dbprompt prompt file (format {metadata.get('format')!r})")
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


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_prompted_model(
    path: str | Path, backbone: BackboneAdapter | None = None, *, device: str = "cpu"
) -> PromptedCLIP:
    """Rebuild the prompted model a file was trained for; refuse any other backbone."""
    pf = read_prompt_file(path)
    if backbone is None:
        backbone = load_backbone(pf.backbone, pf.pretrained, device=device)
    if backbone.fingerprint() != pf.fingerprint:
        raise PromptFileError(
            f"{pf.path}: prompts were trained on {pf.backbone} ({pf.pretrained or 'random'}, "
            f"fingerprint {pf.fingerprint}); the loaded backbone is {backbone.name} "
            f"({backbone.pretrained}, fingerprint {backbone.fingerprint()})"
        )
    if pf.config.vocab and VOCABULARY_IDS not in pf.tensors:
        raise PromptFileError(f"{pf.path}: the prompt config tunes a vocabulary but the file lacks its token ids")
    try:
        model = PromptedCLIP(backbone, pf.config, pf.tensors.get(VOCABULARY_IDS))
        model.load_prompt_state_dict(pf.tensors)
    except ValueError as exc:
        raise PromptFileError(f"{pf.path}: {exc}") from None
    return model.to(device).eval()
