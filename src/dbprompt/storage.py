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
from .prompts.learner import VOCABULARY_IDS
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
    problem = tensor_problem(tensors, config)
    if problem:
        raise PromptFileError(f"{path}: {problem}")
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


_ROLES = {
    "text.tokens": "the textual prompt", "text.gate": "the textual prompt's gate", "visual.tokens": "the visual prompt",
    "visual.gate": "the visual prompt's gate", "visual.map.weight": "the coupling map", "visual.map.bias": "the coupling map",
    VOCABULARY_IDS: "the vocabulary's token ids", "vocab.offsets": "the vocabulary's offsets",
}


def expected_tensors(config: PromptConfig) -> set[str]:
    """The tensor names a prompt file of `config` holds (PromptLearner's state dict)."""
    names = set()
    for kind, length in (("text", config.text_len), ("visual", config.visual_len)):
        if length:
            coupled = kind == "visual" and config.couple
            names |= {"visual.map.weight", "visual.map.bias"} if coupled else {f"{kind}.tokens"}
            names |= {f"{kind}.gate"} if config.gate else set()
    return names | ({VOCABULARY_IDS, "vocab.offsets"} if config.vocab else set())


def tensor_problem(tensors: dict[str, torch.Tensor], config: PromptConfig) -> str | None:
    """What is wrong with a prompt file's tensors for its config (names, dtypes, ranks, values), or None.

    Widths and depths depend on the backbone and are checked when the prompts are loaded onto it;
    what is checked here bounds what loading them can allocate.
    """
    expected = expected_tensors(config)
    missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing:
        return "lacks " + ", ".join(f"{name} ({_ROLES[name]})" for name in missing) + ", which its prompt config needs"
    if unknown:
        return f"holds tensors its prompt config has no use for: {unknown}"
    ranks = {"text.tokens": 3, "visual.tokens": 3, "text.gate": 0, "visual.gate": 0, VOCABULARY_IDS: 1}
    ranks |= {"vocab.offsets": 2, "visual.map.weight": 2, "visual.map.bias": 1}
    for name, tensor in sorted(tensors.items()):
        dtype = torch.int64 if name == VOCABULARY_IDS else torch.float32
        if tensor.dtype != dtype:
            return f"tensor {name} is {tensor.dtype}, not {dtype}"
        if tensor.ndim != ranks[name]:
            return f"tensor {name} has shape {tuple(tensor.shape)}, not {ranks[name]} dimensions"
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"tensor {name} holds non-finite values (NaN or Inf)"
    lengths = {"text.tokens": config.text_len, "visual.tokens": config.visual_len}
    for name, length in lengths.items():
        if name in tensors and tensors[name].shape[1] != length:
            return f"tensor {name} holds {tensors[name].shape[1]} prompt vectors, its config says {length}"
    if VOCABULARY_IDS in tensors:
        return _vocabulary_problem(tensors[VOCABULARY_IDS], tensors["vocab.offsets"], config.vocab)
    return None


def _vocabulary_problem(ids: torch.Tensor, offsets: torch.Tensor, limit: int) -> str | None:
    if not 0 < len(ids) <= limit:
        return f"{len(ids)} vocabulary token ids, its config allows 1 to {limit}"
    if len(offsets) != len(ids):
        return f"{len(offsets)} vocabulary offsets for {len(ids)} token ids"
    if int(ids.min()) < 0 or ids.unique().numel() != ids.numel():
        return "vocabulary token ids must be distinct and non-negative"
    return None
