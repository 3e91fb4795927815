"""An export's towers on ONNX Runtime: numpy in, L2-normalised features out, and no torch imported.

    towers = OnnxTowers.open("photos.onnx", expect_fingerprint=fp, expect_sha256=sha)
    features = towers.encode_images(pixels)   # [B, 3, H, W] float32, normalised as towers.manifest says
    queries = towers.encode_texts(ids)        # [B, L] token ids, as the backbone's tokenizer gives them

A session is made on first use of its tower (a search server needs the text tower alone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import IMAGE, IMAGE_INT8, TEXT, ExportManifest, read_export_manifest

INSTALL = "pip install 'dbprompt[onnx]'"


class OnnxRuntimeMissingError(ImportError):
    """onnxruntime (or onnx, to export) is not installed: a package to install, not a bug."""


def require(package: str) -> Any:
    """Import `package` (onnxruntime, onnx, onnxscript), or say in one line what to install."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise OnnxRuntimeMissingError(f"ONNX towers need the {package} package, which is not installed: {INSTALL}") from None


class OnnxTowers:
    """The image and text towers of one export (see `manifest` for their inputs)."""

    def __init__(self, manifest: ExportManifest, *, int8: bool = False, threads: int | None = None, cuda: bool = False):
        if int8 and not manifest.int8:
            raise ValueError(f"ONNX export {manifest.path}: has no int8 image tower; export it with --int8")
        self.manifest = manifest
        self.int8 = int8
        self.threads = threads
        self.cuda = cuda  # ONNX Runtime's CUDA provider where it has one, else (and for what it lacks) the CPU's
        self._sessions: dict[str, Any] = {}
        self._ort = require("onnxruntime")

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike,
        *,
        expect_fingerprint: str | None = None,
        expect_sha256: str | None = None,
        int8: bool = False,
        threads: int | None = None,
        cuda: bool = False,
        content: bool = True,
    ) -> "OnnxTowers":
        """The export in `directory`, refused (StaleExportError) when made with another backbone fingerprint or
        prompt file sha256 than those expected, or when a tower it loads is not the file exported (its size, and
        with `content` its sha256: ExportManifest.check_files). `int8`: the int8 image tower; `threads`: intra-op
        threads (None: ONNX Runtime's default, one per physical core); `cuda`: on the GPU where ONNX Runtime can."""
        manifest = read_export_manifest(directory)
        manifest.check_made_with(fingerprint=expect_fingerprint, prompt_sha256=expect_sha256)
        manifest.check_files([TEXT, IMAGE_INT8 if int8 else IMAGE], content=content)
        return cls(manifest, int8=int8, threads=threads, cuda=cuda)

    def _session(self, name: str) -> Any:
        if name not in self._sessions:
            options = self._ort.SessionOptions()
            if self.threads is not None:
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
            path = Path(self.manifest.path) / name
            cuda = ["CUDAExecutionProvider"] if self.cuda and "CUDAExecutionProvider" in self._ort.get_available_providers() else []
            self._sessions[name] = self._ort.InferenceSession(str(path), options, providers=[*cuda, "CPUExecutionProvider"])
        return self._sessions[name]

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """Features [B, E] (float32, unit length) of preprocessed images [B, 3, H, W]."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        expected = tuple(self.manifest.image_size)
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != expected:
            raise ValueError(f"images must be [B, 3, {expected[0]}, {expected[1]}], got {list(pixels.shape)}")
        return self._session(IMAGE_INT8 if self.int8 else IMAGE).run(None, {"pixels": pixels})[0]

    def encode_texts(self, ids: np.ndarray) -> np.ndarray:
        """Features [B, E] (float32, unit length) of token ids [B, L]; trailing padding is dropped first where it
        cannot change the result (causal attention, end-token pooling), as PyTorch's text tower does."""
        ids = np.asarray(ids, dtype=np.int64)
        m = self.manifest
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= m.text_context_length:
            raise ValueError(f"token ids must be [B, L] with L <= {m.text_context_length}, got {list(ids.shape)}")
        if m.text_padding_inert and ids.size:
            used = np.flatnonzero((ids != m.text_pad_id).any(axis=0))
            ids = ids[:, : max(int(used[-1]) + 1 if used.size else 1, 2)]
        return self._session(TEXT).run(None, {"ids": np.ascontiguousarray(ids)})[0]
