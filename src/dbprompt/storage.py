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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from . import __version__
from .atomic import atomic_write_bytes
from .compat import BackboneId
from .untrusted import loads

if TYPE_CHECKING:  # torch is imported where tensors are: `read_prompt_header` (a search page's) needs none
    import torch

FORMAT = "dbprompt-prompts/3"
FORMAT_2 = "dbprompt-prompts/2"
# Options of dbprompt's method that format 2 had and that lost on validation: (their default, their flag).
# A format-2 file that used one computes something this dbprompt cannot, so it is refused by name; one
# trained with a training-only option (dropout, a phrase's start) computes what its tensors say, and loads.
FORMAT_2_REMOVED = {
    "gate": (True, "--no-gate"),
    "couple": (False, "--couple"),
    "text_norm": (False, "--text-norm"),
    "visual_norm": (False, "--visual-norm"),
    "visual_readout": (0, "--visual-readout"),
    "visual_start": (0, "--visual-start"),
}
FORMAT_2_TRAINING_ONLY = ("dropout", "text_init", "readout_tokens")
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
    method: str
    config: Any
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
    path: str | Path, tensors: dict[str, torch.Tensor], method: str, config: Any, bb: BackboneId, extra: dict | None = None
) -> Path:
    """Write prompt tensors atomically with what rebuilds and checks their model; `extra`: any JSON-able summary.

    Floating tensors are stored as float16 (half the bytes; in the method comparison the rounding moved
    no test R@1 by more than 0.1 point, BENCHMARKS.md), or as float32 where a value is beyond float16.
    """
    from safetensors.torch import save as st_save

    from .prompts.method import config_to_json

    path = Path(path)
    tensors = {k: _stored(v.detach().cpu()).contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "dbprompt_version": __version__,
        "backbone": bb.name,
        "pretrained": bb.pretrained or "",
        "backbone_fingerprint": bb.fingerprint,
        "prompt_method": method,
        "prompt_config": config_to_json(config),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))
    return path


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    import torch

    if not tensor.is_floating_point():
        return tensor
    fits = bool((tensor.float().abs() <= torch.finfo(torch.float16).max).all())
    return tensor.half() if fits else tensor.float()


def read_prompt_file(path: str | Path) -> PromptFile:
    """Read and check a prompt file; anything wrong with it is one PromptFileError naming the file."""
    import torch
    from safetensors.torch import load as st_load

    from .prompts.method import config_from_json
    from .prompts.registry import method_named

    path = Path(path)
    data = _file_bytes(path)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise PromptFileError(f"{path}: not a dbprompt prompt file (not valid safetensors: {exc})") from None
    metadata, method, options, extra = _header(path, data)
    try:
        config = config_from_json(method_named(method).config_class, options)
    except PromptFileError:
        raise
    except (ValueError, TypeError) as exc:
        raise PromptFileError(f"{path}: bad metadata: {exc}") from None
    problem = tensor_problem(tensors)
    if problem:
        raise PromptFileError(f"{path}: {problem}")
    tensors = {k: v.float() if v.dtype == torch.float16 else v for k, v in tensors.items()}  # computed in float32
    return PromptFile(path, tensors, metadata, method, config, extra)


def read_prompt_header(path: str | Path) -> tuple[dict[str, str], str, dict[str, Any], dict]:
    """A prompt file's metadata, prompt method, its options and `extra`, checked as `read_prompt_file` checks
    them but without reading its tensors (nor importing torch: a search page describes an index with them)."""
    path = Path(path)
    return _header(path, _file_bytes(path))


def _file_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    return _bounded_bytes(path)


def _header(path: Path, data: bytes) -> tuple[dict[str, str], str, dict[str, Any], dict]:
    try:
        metadata = _read_metadata(data)
    except (ValueError, AttributeError, TypeError) as exc:
        raise PromptFileError(f"{path}: not a dbprompt prompt file (not valid safetensors: {exc})") from None
    if metadata.get("format") not in (FORMAT, FORMAT_2):
        raise PromptFileError(f"{path}: not a {FORMAT} prompt file (format {metadata.get('format')!r})")
    missing = {"backbone", "backbone_fingerprint", "prompt_config"} - set(metadata)
    if missing:
        raise PromptFileError(f"{path}: metadata lacks {sorted(missing)}")
    if not _FINGERPRINT.fullmatch(metadata["backbone_fingerprint"]):
        raise PromptFileError(f"{path}: backbone_fingerprint is not a hex digest")
    try:
        extra = loads(metadata.get("extra", "{}"))
        method, options = _method_options(metadata, path)
    except PromptFileError:
        raise
    except (ValueError, TypeError) as exc:
        raise PromptFileError(f"{path}: bad metadata: {exc}") from None
    if not isinstance(extra, dict):
        raise PromptFileError(f"{path}: bad metadata: extra is not a JSON object")
    return metadata, method, options, extra


class RemovedOptionError(PromptFileError):
    """A format-2 prompt file that used an option this dbprompt no longer has."""


def _method_options(metadata: dict[str, str], path: Path) -> tuple[str, dict]:
    """The file's prompt method and its options as this dbprompt reads them (format 2: dbprompt's method,
    its options of the time mapped onto today's, or refused by name)."""
    options = loads(metadata["prompt_config"])
    if not isinstance(options, dict):
        raise ValueError("the prompt config is not a JSON object")
    if metadata["format"] == FORMAT:
        if not isinstance(metadata.get("prompt_method"), str):
            raise ValueError("it names no prompt method")
        return metadata["prompt_method"], options
    version = metadata.get("dbprompt_version", "0.2")
    for name, (default, flag) in FORMAT_2_REMOVED.items():
        if name in options and options[name] != default:
            raise RemovedOptionError(
                f"{path}: written by dbprompt {version} with {flag} ({name} = {json.dumps(options[name])}), an option "
                f"dbprompt {__version__} no longer has (it lost on validation, BENCHMARKS.md): train the database again "
                f"with dbprompt {__version__}, or read this file with dbprompt {version}"
            )
    kept = {k: v for k, v in options.items() if k not in FORMAT_2_REMOVED and k not in FORMAT_2_TRAINING_ONLY}
    # Options a file's version did not have yet read as off.
    return "dbprompt", {"vocab": 0, "visual_adapter": 0} | kept


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
    import torch

    for name, tensor in sorted(tensors.items()):
        if tensor.dtype not in (torch.float16, torch.float32, torch.int64):
            return f"tensor {name} is {tensor.dtype}, not {torch.float16}, {torch.float32} or {torch.int64}"
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"tensor {name} holds non-finite values (NaN or Inf)"
        if not tensor.is_floating_point() and tensor.numel() and int(tensor.min()) < 0:
            return f"tensor {name} holds negative token ids"
    return None
