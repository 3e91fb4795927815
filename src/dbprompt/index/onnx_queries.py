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

from ..onnx.manifest import OnnxExportError, StaleExportError
from ..onnx.pixels import Pixels, export_pixels
from ..onnx.tokens import Tokenize, export_tokenizer
from ..onnx.towers import OnnxTowers
from .manifest import IndexInfo

if TYPE_CHECKING:
    from ..runtime import Runtime

EXPORT = "onnx"


def index_towers(info: IndexInfo, runtime: Runtime, *, threads: int | None = None) -> OnnxTowers:
    """The towers a search of an index built with `--runtime onnx` encodes its queries with (image queries
    through the image tower its vectors came from); `threads`: ONNX Runtime's intra-op threads (None: its default).

    The two towers it loads are checked against the sizes and sha256 the export recorded, every time it opens
    them (chosen over sizes alone since it is cheap where it matters most): on the proxy's export (text + int8
    image tower, 48 MB) 0.04 s once cached, beside a server start of 0.8 s; on ViT-B-32's (text + fp32 image,
    608 MB) 0.4 s cached, 1.5 s read from disk (2 CPUs, 2026-12-07)."""
    again = f"build it with `dbprompt index DB --out {info.path} --runtime onnx`"
    if not info.onnx:
        raise OnnxExportError(f"{info.path}: holds no ONNX export (it was built with --runtime torch); {again}")
    try:
        return OnnxTowers.open(
            info.path / EXPORT, expect_fingerprint=info.fingerprint, expect_sha256=info.prompt_sha256,
            int8=info.onnx.get("precision") == "int8", threads=threads, cuda=runtime.device_type == "cuda",
        )
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
        None where it does not (the backbone's path then tokenizes or preprocesses)."""
        towers = index_towers(info, runtime)  # a missing, stale or edited export is refused here, before any backbone loads
        tokenize, pixels = export_tokenizer(towers.manifest), export_pixels(towers.manifest)
        if tokenize is None or pixels is None:
            return None
        return cls(towers, tokenize, pixels)

    def encode_text(self, text: str) -> np.ndarray:
        return self.towers.encode_texts(self.tokenize([text]))[0]

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        return self.pixels(image)[None]

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.towers.encode_images(pixels)[0]
