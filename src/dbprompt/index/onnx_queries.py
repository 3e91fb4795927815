"""Search queries through an index's ONNX export (`--runtime onnx`), and with no torch where the export allows.

The towers a search uses are those the index's vectors came from (its recorded precision); they are refused,
naming the command that makes them again, when missing or made with another backbone or prompt file.
`OnnxQueries` also tokenizes and preprocesses from the export's own files (onnx/tokens.py, onnx/pixels.py),
so a server that serves only such indexes never imports torch nor loads the backbone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..onnx.manifest import OnnxExportError, StaleExportError, read_export_manifest
from ..onnx.pixels import Pixels, export_pixels
from ..onnx.tokens import Tokenize, export_tokenizer
from ..onnx.towers import OnnxTowers
from .manifest import IndexInfo

if TYPE_CHECKING:
    from ..runtime import Runtime

EXPORT = "onnx"


def index_towers(info: IndexInfo, runtime: Runtime, *, threads: int | None = None) -> OnnxTowers:
    """The towers a search of an index built with `--runtime onnx` encodes its queries with (image queries
    through the image tower its vectors came from); `threads`: ONNX Runtime's intra-op threads (None: its default)."""
    again = f"build it with `dbprompt index DB --out {info.path} --runtime onnx`"
    if not info.onnx:
        raise OnnxExportError(f"{info.path}: holds no ONNX export (it was built with --runtime torch); {again}")
    try:
        manifest = read_export_manifest(info.path / EXPORT)
        manifest.check_made_with(fingerprint=info.fingerprint, prompt_sha256=info.prompt_sha256)
        return OnnxTowers(manifest, int8=info.onnx.get("precision") == "int8", threads=threads, cuda=runtime.device_type == "cuda")
    except (OnnxExportError, StaleExportError, ValueError) as exc:  # ValueError: an int8 tower it lacks
        raise OnnxExportError(f"{info.path}: its ONNX export cannot be used: {str(exc).split('; ')[0]}; {again}") from None


class OnnxQueries:
    """Text and image queries to vectors through an export alone: its tokenizer, preprocessing and towers."""

    def __init__(self, towers: OnnxTowers, tokenize: Tokenize, pixels: Pixels):
        self.towers = towers
        self.tokenize = tokenize
        self.pixels = pixels

    @classmethod
    def of(cls, info: IndexInfo, runtime: Runtime) -> OnnxQueries | None:
        """The index's export, where it holds a tokenizer and a preprocessing this package reads without torch;
        None where it does not (or is missing or stale: the backbone's path says why)."""
        if not info.onnx:
            return None
        try:
            manifest = read_export_manifest(info.path / EXPORT)
        except OnnxExportError:
            return None
        tokenize, pixels = export_tokenizer(manifest), export_pixels(manifest)
        if tokenize is None or pixels is None:
            return None
        return cls(index_towers(info, runtime), tokenize, pixels)

    def encode_text(self, text: str) -> np.ndarray:
        return self.towers.encode_texts(self.tokenize([text]))[0]

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        return self.pixels(image)[None]

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.towers.encode_images(pixels)[0]
