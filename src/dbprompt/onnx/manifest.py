"""What an ONNX export directory holds and the manifest that says what made it (no torch here: a server reads it).

    manifest.json      backbone and its fingerprint, the prompt file's sha256, the towers' inputs
                       (image size, normalisation, preprocessing; text length, padding), the tokenizer, the
                       check's result, each tower's size and sha256
    image.onnx         pixels [B, 3, H, W] (normalised as the manifest says) -> L2-normalised features [B, E]
    text.onnx          token ids [B, L] (L up to the context length) -> L2-normalised features [B, E]
    image.int8.onnx    with --int8: the image tower with int8 weights (dynamic quantization)
    tokenizer/         the tokenizer's files where it can be saved (see `tokenizer` in the manifest)

An export is only ever used with the backbone and prompt file that made it: `check_made_with` refuses any other.
The manifest records each .onnx file's size and sha256 (`files`), so an edited or truncated tower is refused
too (`check_files`); an export made before they were recorded has none, and its files are unverified.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..compat import IncompatibleError, file_sha256
from ..untrusted import loads

FORMAT = "dbprompt-onnx/1"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 2**20
IMAGE, TEXT, IMAGE_INT8 = "image.onnx", "text.onnx", "image.int8.onnx"
TOKENIZER_DIR = "tokenizer"
ONNX_FILES = (IMAGE, TEXT, IMAGE_INT8)
SHA256 = re.compile(r"[0-9a-f]{64}")
AGAIN = "export again with `dbprompt export PROMPTS --onnx DIR`"


class OnnxExportError(ValueError):
    """An export directory that is missing or malformed, or an export that failed its check."""


class StaleExportError(IncompatibleError):
    """An export made with another backbone or prompt file than the one it is used with."""


@dataclass(frozen=True)
class ExportManifest:
    """The manifest of an export directory."""

    backbone: str
    pretrained: str | None
    fingerprint: str
    prompt_sha256: str | None  # None: exported from prompts in memory, not from a file
    prompt_method: str
    opset: int
    image_size: list[int]
    mean: list[float] | None
    std: list[float] | None
    transform: str
    embed_dim: int
    text_context_length: int
    text_pad_id: int
    text_padding_inert: bool  # trailing padding columns may be dropped before the text tower
    tokenizer: dict[str, Any]
    int8: bool
    check: dict[str, Any]
    created: str
    dbprompt_version: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"bytes", "sha256"}; absent: unverified
    image_processor: dict[str, Any] = field(default_factory=dict)  # a Hugging Face processor's settings (pixels.py)
    path: Path = field(default=Path("."), compare=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        return {"format": FORMAT, **data}

    def check_made_with(self, *, fingerprint: str | None = None, prompt_sha256: str | None = None) -> None:
        """Refuse this export for another backbone (fingerprint) or another prompt file (sha256)."""
        where = f"ONNX export {self.path}"
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise StaleExportError(
                f"{where}: made with backbone {self.backbone} (fingerprint {self.fingerprint}), not the one in use "
                f"(fingerprint {fingerprint}); {AGAIN}"
            )
        if prompt_sha256 is not None and prompt_sha256 != self.prompt_sha256:
            made = f"prompt file sha256 {self.prompt_sha256[:16]}…" if self.prompt_sha256 else "prompts not read from a file"
            raise StaleExportError(
                f"{where}: made with {made}, not the prompt file in use ({prompt_sha256[:16]}…); {AGAIN}"
            )

    def check_files(self, names: Iterable[str] | None = None, *, content: bool = True) -> None:
        """Refuse this export when one of its files `names` (default: all recorded) is not the one exported: its
        size differs (a stat), or with `content` its sha256 (a read: about 1.6 GB/s here, 0.4 s for ViT-B-32's
        towers once cached, 1.5 s from disk). A file the manifest has no record of is not checked."""
        for name in self.files if names is None else names:
            recorded = self.files.get(name)
            if recorded is None:
                continue
            path = self.path / name
            size = path.stat().st_size
            if size != recorded["bytes"]:
                raise StaleExportError(
                    f"ONNX export {self.path}: {name} is {size:,} bytes, not the {recorded['bytes']:,} it was exported "
                    f"with (truncated or replaced); {AGAIN}"
                )
            if content and file_sha256(path) != recorded["sha256"]:
                raise StaleExportError(f"ONNX export {self.path}: {name} was changed since it was exported (its sha256 differs); {AGAIN}")


def record_files(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The size and sha256 of each file `names` of an export, as its manifest keeps them."""
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in names}


_TYPES: dict[str, Any] = {
    "backbone": str, "pretrained": (str, type(None)), "fingerprint": str, "prompt_sha256": (str, type(None)),
    "prompt_method": str, "opset": int, "image_size": list, "mean": (list, type(None)), "std": (list, type(None)),
    "transform": str, "embed_dim": int, "text_context_length": int, "text_pad_id": int, "text_padding_inert": bool,
    "tokenizer": dict, "int8": bool, "check": dict, "created": str, "dbprompt_version": str, "files": dict,
    "image_processor": dict,
}
_OPTIONAL = {"files", "image_processor"}  # absent from exports made before they were kept


def read_export_manifest(directory: str | os.PathLike) -> ExportManifest:
    """The manifest of an export directory, read bounded and field by field (it may come from anyone)."""
    path = Path(directory)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise OnnxExportError(f"{path}: not a dbprompt ONNX export (no {MANIFEST}); make one with `dbprompt export PROMPTS --onnx {path}`")
    try:
        if manifest.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"over {MAX_MANIFEST_BYTES:,} bytes")
        data = loads(manifest.read_bytes())
    except (ValueError, OSError) as exc:
        raise OnnxExportError(f"{manifest}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
        raise OnnxExportError(f"{manifest}: not a {FORMAT} manifest (made by another dbprompt version?); export again")
    wrong = sorted((set(data) ^ set(_TYPES)) - _OPTIONAL)
    if wrong:
        raise OnnxExportError(f"{manifest}: bad manifest: unexpected or missing fields {wrong}")
    for name, kind in _TYPES.items():
        value = data.get(name, {})
        bad_bool = isinstance(value, bool) and kind is not bool
        if not isinstance(value, kind) or bad_bool:
            raise OnnxExportError(f"{manifest}: bad manifest: {name} is {type(value).__name__}")
    if not all(_file_record(name, record) for name, record in data.get("files", {}).items()):
        raise OnnxExportError(f"{manifest}: bad manifest: files must map {', '.join(ONNX_FILES)} to their bytes and sha256")
    files = (IMAGE, TEXT) + ((IMAGE_INT8,) if data["int8"] else ())
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise OnnxExportError(f"{path}: incomplete ONNX export, {', '.join(missing)} missing; export again")
    return ExportManifest(path=path, **data)


def _file_record(name: str, record: Any) -> bool:
    return (
        name in ONNX_FILES and isinstance(record, dict) and set(record) == {"bytes", "sha256"}
        and type(record["bytes"]) is int and isinstance(record["sha256"], str) and SHA256.fullmatch(record["sha256"]) is not None
    )
