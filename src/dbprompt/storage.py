"""Prompt files: safetensors with the prompts and enough metadata to rebuild and check the model.

safetensors holds raw tensors and string metadata only, so opening a file a user hands
in never runs code (no pickle anywhere). A file from someone else is also bounded (file and
header size, metadata nesting) and checked tensor by tensor (names, shapes, dtypes, finite
values, token ids) before any model is built from it; what it records about its backbone
steers nothing (see `backbones.recorded`).
"""

from __future__ import annotations

import json
import re
import typing
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
from .untrusted import loads

FORMAT = "dbprompt-prompts/2"
# Prompts for the largest open_clip models with deep prompts and a full vocabulary take tens of
# MB and a header of a few KB per hundred epochs of history; anything far beyond is not ours.
MAX_FILE_BYTES = 256 * 2**20
MAX_HEADER_BYTES = 4 * 2**20
_FINGERPRINT = re.compile(r"[0-9a-f]{8,64}")


class PromptFileError(ValueError):
    """A prompt file that cannot be read, or does not belong to the backbone at hand."""


@dataclass
class PromptFile:
    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    config: PromptConfig
    extra: dict

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


def write_prompt_file(
    path: str | Path, tensors: dict[str, torch.Tensor], config: PromptConfig, bb: BackboneId, extra: dict | None = None
) -> Path:
    """Write prompt tensors atomically with what rebuilds and checks their model; `extra`: any JSON-able summary.

    Floating tensors are stored as float16 (half the bytes; in the method comparison the rounding moved
    no test R@1 by more than 0.1 point, BENCHMARKS.md), or as float32 where a value is beyond float16.
    """
    path = Path(path)
    tensors = {k: _stored(v.detach().cpu()).contiguous() for k, v in tensors.items()}
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


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_floating_point():
        return tensor
    fits = bool((tensor.float().abs() <= torch.finfo(torch.float16).max).all())
    return tensor.half() if fits else tensor.float()


def read_prompt_file(path: str | Path) -> PromptFile:
    """Read and check a prompt file; anything wrong with it is one PromptFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    data = _bounded_bytes(path)
    try:
        tensors = st_load(data)
        metadata = _read_metadata(data)
    except (SafetensorError, ValueError) as exc:
        raise PromptFileError(f"{path}: not a dbprompt prompt file (not valid safetensors: {exc})") from None
    if metadata.get("format") != FORMAT:
        raise PromptFileError(f"{path}: not a {FORMAT} prompt file (format {metadata.get('format')!r})")
    missing = {"backbone", "backbone_fingerprint", "prompt_config"} - set(metadata)
    if missing:
        raise PromptFileError(f"{path}: metadata lacks {sorted(missing)}")
    if not _FINGERPRINT.fullmatch(metadata["backbone_fingerprint"]):
        raise PromptFileError(f"{path}: backbone_fingerprint is not a hex digest")
    try:
        config = _config(metadata["prompt_config"])
        extra = loads(metadata.get("extra", "{}"))
    except (ValueError, TypeError) as exc:
        raise PromptFileError(f"{path}: bad metadata: {exc}") from None
    if not isinstance(extra, dict):
        raise PromptFileError(f"{path}: bad metadata: extra is not a JSON object")
    problem = tensor_problem(tensors)
    if problem:
        raise PromptFileError(f"{path}: {problem}")
    tensors = {k: v.float() if v.dtype == torch.float16 else v for k, v in tensors.items()}  # computed in float32
    return PromptFile(path, tensors, metadata, config, extra)


def _config(text: str) -> PromptConfig:
    """The prompt config, each option of its own type first (PromptConfig itself trusts its caller)."""
    data = loads(text)
    if isinstance(data, dict):
        hints = typing.get_type_hints(PromptConfig)
        for name, value in data.items():
            if name not in hints:
                continue  # from_json names unknown options
            kinds = typing.get_args(hints[name]) or (hints[name],)
            kinds += (int,) if float in kinds else ()
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"prompt option {name} is {type(value).__name__}")
    return PromptConfig.from_json(text)


def _bounded_bytes(path: Path) -> bytes:
    """The file's bytes, refused before reading when its size or header length is beyond a prompt file's."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise PromptFileError(f"{path}: not a dbprompt prompt file ({size:,} bytes; prompt files are under {MAX_FILE_BYTES:,})")
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        if header > MAX_HEADER_BYTES:
            raise PromptFileError(
                f"{path}: not a dbprompt prompt file (a header of {header:,} bytes; prompt files' are under {MAX_HEADER_BYTES:,})"
            )
        f.seek(0)
        return f.read()


def _read_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = loads(data[8 : 8 + header_len], max_depth=None)  # safetensors already bounded its depth
    return header.get("__metadata__", {}) or {}


def tensor_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with a prompt file's tensors whatever their names (dtypes, values), or None.

    Names and shapes are the prompt module's to check, against the backbone it is loaded on
    (`PromptedCLIP.from_state`), before anything of the file's size is allocated.
    """
    for name, tensor in sorted(tensors.items()):
        if tensor.dtype not in (torch.float16, torch.float32, torch.int64):
            return f"tensor {name} is {tensor.dtype}, not {torch.float16}, {torch.float32} or {torch.int64}"
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"tensor {name} holds non-finite values (NaN or Inf)"
        if not tensor.is_floating_point() and tensor.numel() and int(tensor.min()) < 0:
            return f"tensor {name} holds negative token ids"
    return None
