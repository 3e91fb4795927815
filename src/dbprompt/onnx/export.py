"""A prompted model's towers as ONNX graphs, the prompts baked in as constants, checked against PyTorch.

Once trained, a prompt file changes nothing but a few constant tensors, so each prompted tower
exports like the backbone's own: torch's dynamo exporter (`torch.onnx.export(dynamo=True)`, the
one torch keeps) traces `PromptedCLIP.encode_image` / `encode_text` themselves, so the graphs
compute exactly what PyTorch does (deep prompts, gates, word offsets, adapters), with a dynamic
batch (and text length). Every export is run on ONNX Runtime before it is kept: one whose features
on a test batch are further than `TOLERANCE` from PyTorch's leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_dir, atomic_write_text
from .manifest import (
    IMAGE, IMAGE_INT8, MANIFEST, TEXT, TOKENIZER_DIR, ExportManifest, OnnxExportError, read_export_manifest, record_files,
)
from .pixels import hf_preprocessing
from .towers import OnnxTowers, require

OPSET = 18
TOLERANCE = 1e-4  # max abs difference of unit-length fp32 features, ONNX Runtime vs PyTorch
TRACE_BATCH = 2  # the example batch the graphs are traced with; the check runs another size
# Captions of several lengths the text check encodes (words any tokenizer has, and some it may not).
CHECK_CAPTIONS = (
    "a photo of a dog",
    "two red circles and a small blue star on a grey background, seen from above at dusk",
    "x",
    "an old map of the harbour, 1887",
    "a",
)


class _ImageTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class _TextTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Trimming padding depends on the ids' values: the runtime trims before the graph instead (OnnxTowers).
        return self.model.encode_text(ids, trim=False)


def _searchsorted(sorted_sequence: Any, values: Any, out_int32: bool = False, right: bool = False, side: Any = None, sorter: Any = None) -> Any:
    """aten.searchsorted (left side) in ONNX, which has no such operator: word offsets look their token ids up with
    it. Counts the sorted ids below each value (a [B, L, vocabulary] comparison: the vocabulary is small)."""
    from onnxscript import INT64
    from onnxscript import opset18 as op

    if right or side == "right" or sorter is not None or out_int32:
        raise NotImplementedError("only searchsorted(sorted, values) of int64, left side, is exported")
    below = op.Less(sorted_sequence, op.Unsqueeze(values, [-1]))
    return op.ReduceSum(op.Cast(below, to=INT64.dtype), [-1], keepdims=0)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's and quantizer's progress lines, warnings and log notes are their own business, not the user's."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir", "onnxruntime")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(module: nn.Module, example: torch.Tensor, name: str, dims: dict[int, Any], path: Path) -> None:
    """One tower to `path`, through torch's dynamo exporter."""
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module.eval(), (example,), input_names=[name], output_names=["features"], dynamic_shapes=({**dims},),
                opset_version=OPSET, dynamo=True, verbose=False,
                custom_translation_table={torch.ops.aten.searchsorted.Tensor: _searchsorted},
            )
            program.save(str(path))
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise OnnxExportError(f"the {path.stem} tower could not be exported to ONNX ({type(exc).__name__}: {detail})") from exc


def export_onnx(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    prompt_sha256: str | None = None,
    int8: bool = False,
    check_batch: int = 3,
    log: Callable[[str], None] | None = None,
) -> ExportManifest:
    """Write the image and text towers of `model` (a PromptedCLIP: this module is below it, so named by its
    role alone; put in eval mode) to `directory`, replaced whole, or left as it was on failure.

    `prompt_sha256`: the prompt file's, recorded so the export is refused with any other file.
    `int8`: also an image tower with int8 weights (dynamic quantization), recording how far its features
    are from fp32's on the check batch. Raises OnnxExportError when a tower's features on the check batch
    (`check_batch` random images, `CHECK_CAPTIONS`) differ from PyTorch's by more than TOLERANCE.
    """
    require_exporter()
    if check_batch == TRACE_BATCH or check_batch < 1:
        raise ValueError(f"check_batch must be >= 1 and not {TRACE_BATCH} (the traced batch), so the dynamic batch is checked")
    out = Path(directory)
    _check_replaceable(out)
    model = model.eval()
    backbone = model.backbone
    device = next(model.parameters()).device
    say = log or (lambda _: None)
    pixels = torch.randn(TRACE_BATCH, 3, *backbone.image_size, device=device)
    ids = model.tokenize(list(CHECK_CAPTIONS[:TRACE_BATCH])).to(device)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    length = torch.export.Dim("length", min=2, max=model.text_context_length)
    with atomic_dir(out) as tmp:
        say(f"exporting the image tower of {backbone.name} to ONNX (opset {OPSET})")
        _export(_ImageTower(model), pixels, "pixels", {0: batch}, tmp / IMAGE)
        say("exporting the text tower")
        _export(_TextTower(model), ids, "ids", {0: batch, 1: length}, tmp / TEXT)
        tokenizer = _save_tokenizer(backbone, tmp / TOKENIZER_DIR)
        mean, std = _normalisation(backbone.image_transform())
        manifest = ExportManifest(
            backbone=backbone.name, pretrained=backbone.pretrained, fingerprint=backbone.fingerprint(),
            prompt_sha256=prompt_sha256, prompt_method=model.prompts.name, opset=OPSET,
            image_size=list(backbone.image_size), mean=mean, std=std, transform=repr(backbone.image_transform())[:2000],
            embed_dim=int(backbone.embed_dim), text_context_length=int(model.text_context_length),
            text_pad_id=backbone.text_pad_id, text_padding_inert=bool(backbone.text_padding_is_inert()),
            tokenizer=tokenizer, int8=False, check={}, image_processor=hf_preprocessing(backbone.image_transform()),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), dbprompt_version=__version__, path=tmp,
        )
        _write(manifest)
        say(f"checking the towers on ONNX Runtime against PyTorch ({check_batch} images, {len(CHECK_CAPTIONS)} captions)")
        check = _check(model, manifest, check_batch)
        if int8:
            say("quantizing the image tower to int8")
            check |= _quantize(manifest, check["images"])
        towers = [IMAGE, TEXT] + [IMAGE_INT8] * int8
        manifest = _replace(manifest, int8=int8, check={k: v for k, v in check.items() if k != "images"}, files=record_files(tmp, towers))
        _write(manifest)
    return read_export_manifest(out)


def require_exporter() -> None:
    """What exporting needs beyond dbprompt's own dependencies, or one line saying what to install."""
    for package in ("onnxruntime", "onnx", "onnxscript"):
        require(package)


def _check_replaceable(out: Path) -> None:
    """An export replaces an earlier export or an empty directory, never anything else (an index, photos)."""
    if not out.exists():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    try:
        read_export_manifest(out)
    except OnnxExportError:
        raise OnnxExportError(f"{out}: exists and is not a dbprompt ONNX export; give a new or empty directory") from None


def _check(model: nn.Module, manifest: ExportManifest, batch: int) -> dict[str, Any]:
    """Both towers on ONNX Runtime, through OnnxTowers as they will be used, vs PyTorch; raises beyond TOLERANCE."""
    towers = OnnxTowers(manifest)
    backbone = model.backbone
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, *backbone.image_size, generator=generator)
    ids = model.tokenize(list(CHECK_CAPTIONS))
    with torch.no_grad():
        want_images = model.encode_image(pixels.to(device)).float().cpu().numpy()
        want_texts = model.encode_text(ids.to(device)).float().cpu().numpy()
    got_images = towers.encode_images(pixels.numpy())
    got_texts = towers.encode_texts(ids.numpy())
    diffs = {"image_max_abs_diff": _max_diff(got_images, want_images), "text_max_abs_diff": _max_diff(got_texts, want_texts)}
    for key, diff in diffs.items():
        if not diff <= TOLERANCE:
            tower = key.split("_")[0]
            raise OnnxExportError(
                f"the exported {tower} tower of {backbone.name} differs from PyTorch's by {diff:.2e} on the check batch "
                f"(more than {TOLERANCE:g}): export refused. This is a bug in dbprompt's export: please report it"
            )
    return {"batch": batch, "captions": len(CHECK_CAPTIONS), "tolerance": TOLERANCE, **diffs, "images": pixels.numpy()}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")


def _quantize(manifest: ExportManifest, pixels: np.ndarray) -> dict[str, Any]:
    """image.int8.onnx: int8 weights of the matrix products with weights, activations quantized per batch at run
    time (no calibration data). ONNX Runtime's own fusions (layer norms with their residual, the attention's
    scale) are applied first and kept in the file: once quantized, the graph no longer matches them at load
    time, and on ViT-B-32 int8 ran 1.2-1.6x faster with them (under load). Weights per output channel: as fast, a
    little closer. The patch embedding stays fp32 (int8 Conv was slower, and no closer). Weights in 7 bits
    (`reduce_range`): on a CPU without AVX512-VNNI, ONNX Runtime's u8 x s8 products saturate in 16 bits, and
    a file exported anywhere may run there (dbprompt-tiny on an AVX2-only CPU: cosine to fp32 0.979 with 8-bit
    weights, 0.9999 with 7)."""
    ort = require("onnxruntime")
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    folder = manifest.path
    fused, prepared = folder / f".{IMAGE}.fused", folder / f".{IMAGE}.prepared"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # any CPU's, not this one's layouts
    options.optimized_model_filepath = str(fused)
    with _quiet():
        ort.InferenceSession(str(folder / IMAGE), options, providers=["CPUExecutionProvider"])
        quant_pre_process(str(fused), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantize_dynamic(
            str(prepared), str(folder / IMAGE_INT8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True,
            reduce_range=True,
        )
    fused.unlink()
    prepared.unlink()
    fp32 = OnnxTowers(manifest).encode_images(pixels)
    int8 = OnnxTowers(_replace(manifest, int8=True), int8=True).encode_images(pixels)
    return {"int8_min_cosine": float((fp32 * int8).sum(axis=1).min())}


def _replace(manifest: ExportManifest, **changes: Any) -> ExportManifest:
    return dataclasses.replace(manifest, **changes)


def _write(manifest: ExportManifest) -> None:
    atomic_write_text(manifest.path / MANIFEST, json.dumps(manifest.to_json(), indent=2) + "\n")


def _normalisation(transform: Any) -> tuple[list[float] | None, list[float] | None]:
    """The mean and std pixels are normalised with: torchvision's Normalize (open_clip) or an HF image processor's."""
    processor = getattr(transform, "processor", None)
    if processor is not None and getattr(processor, "image_mean", None) is not None:
        return [float(v) for v in processor.image_mean], [float(v) for v in processor.image_std]
    for step in getattr(transform, "transforms", ()):
        if type(step).__name__ == "Normalize":
            return [float(v) for v in step.mean], [float(v) for v in step.std]
    return None, None


def _save_tokenizer(backbone: Any, folder: Path) -> dict[str, Any]:
    """The tokenizer's files where they can be saved (open_clip's CLIP BPE vocabulary, a Hugging Face tokenizer),
    so a server can tokenize without the backbone; else its name alone."""
    found = getattr(backbone, "tokenizer", None) or getattr(getattr(backbone, "_tokenize", None), "tokenizer", None)
    info: dict[str, Any] = {"name": backbone.name, "kind": type(found).__name__ if found is not None else "unknown", "files": []}
    hf = getattr(found, "tokenizer", found)  # open_clip's HFTokenizer wraps a transformers tokenizer
    if hasattr(hf, "save_pretrained"):
        folder.mkdir()
        hf.save_pretrained(str(folder))
        info |= {"kind": "huggingface", "files": sorted(p.name for p in folder.iterdir())}
    elif type(found).__name__ == "SimpleTokenizer":
        from open_clip.tokenizer import default_bpe

        if len(found.encoder) == 49408:  # the vocabulary open_clip ships (no added special tokens)
            folder.mkdir()
            shutil.copyfile(default_bpe(), folder / Path(default_bpe()).name)
            info |= {"kind": "open_clip-bpe", "files": [Path(default_bpe()).name], "clean": "lower"}
    return info
