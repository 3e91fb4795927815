"""`dbprompt index/search/serve --runtime onnx`: the prompt file's towers on ONNX Runtime instead of PyTorch.

The export lives in the index directory (`onnx/`): made on first use (in the build's work directory, so an
interrupted build keeps it), carried into each new index by hard links (an update on PyTorch keeps it too),
and reused by updates, searches and servers. An export made with another prompt file or backbone, broken, or
whose towers were edited since (their recorded sizes and sha256) is never used: a build exports again and says
why in one line; a search or server refuses it, naming the command that makes it again.

Precision "auto" takes the int8 image tower only where it keeps this database's results: on up to
MEASURE_IMAGES of its own images, int8's top-10 (for their captions, else each image's neighbours) must
share AGREEMENT of fp32's. Random weights score images so nearly alike that int8 reorders them (ViT-B-32:
0.75-0.82), a trained backbone keeps them (the proxy: 0.985-1.0); the measure and the choice are logged
and kept in the index's manifest (`onnx`), and an update on the same export keeps the choice.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..compat import file_sha256
from ..data import BadInputReport, Record
from ..model import PromptedCLIP
from ..onnx.manifest import ExportManifest, OnnxExportError, StaleExportError, read_export_manifest
from ..onnx.towers import OnnxTowers
from ..pipeline import decode_batches
from ..runtime import Runtime
from .calibration import caption_queries
from .manifest import IndexInfo
from .onnx_queries import EXPORT

PRECISIONS = ("auto", "fp32", "int8")
AGREEMENT = 0.95  # of int8's top-10 that fp32's has too, for "auto" to take int8
MEASURE_IMAGES = 256
TOP = 10


@dataclass
class OnnxImages:
    """The export an index build keeps, the image tower it embeds with (None: carried, not used), and what the
    index's manifest records of them."""

    export: ExportManifest
    towers: OnnxTowers | None
    record: dict[str, object]

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.towers.encode_images(images.numpy())

    def kept_by(self, info: IndexInfo) -> bool:
        """Whether the index `info` holds this very export, recorded as it is (so it need not be written again)."""
        return info.onnx == self.record and self.export.path == info.path / EXPORT

    def place(self, index_dir: Path) -> dict[str, object]:
        """The export into the index directory being written (hard links: its files are never written in place)."""
        shutil.copytree(self.export.path, index_dir / EXPORT, copy_function=_link)
        return self.record


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def onnx_images(
    model: PromptedCLIP,
    prompt_file: Path,
    out: Path,
    work: Path,
    runtime: Runtime,
    precision: str,
    records: Sequence[Record],
    old: IndexInfo | None,
    database: str,
    *,
    batch_size: int,
    log: Callable[[str], None],
) -> OnnxImages:
    """The image tower to index `records` with: the export in `out` or `work` when it was made with this prompt
    file and backbone (and has the int8 tower wanted), else a new one in `work`; its precision as asked, or
    for "auto" as measured (or as `old`, the index in `out`, measured on the same export and `database`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    made_by = {"fingerprint": model.backbone.fingerprint(), "prompt_sha256": file_sha256(prompt_file)}
    int8 = precision != "fp32"
    manifest = _reusable(out / EXPORT, made_by, int8, log) or _reusable(work / EXPORT, made_by, int8, log)
    if manifest is None:
        shutil.rmtree(work / EXPORT, ignore_errors=True)
        log(f"exporting the towers of {prompt_file} to ONNX (once: the index keeps the export)")
        manifest = model.export_onnx(work / EXPORT, prompt_sha256=made_by["prompt_sha256"], int8=int8, log=log)
    fp32 = _towers(manifest, runtime, int8=False)
    int8_tower = _towers(manifest, runtime, int8=True) if manifest.int8 else None
    if precision == "auto":
        kept = old.onnx if old is not None and old.database == database and manifest.path == out / EXPORT else {}
        record = kept if kept.get("requested") == "auto" else _measure(model, fp32, int8_tower, records, runtime, batch_size, log)
    else:
        record = {"requested": precision, "precision": precision}
    towers = int8_tower if record["precision"] == "int8" else fp32
    return OnnxImages(manifest, towers, {"export": EXPORT, **record})


def kept_export(model: PromptedCLIP, prompt_file: Path, out: Path, old: IndexInfo | None) -> OnnxImages | None:
    """The export of the index in `out`, carried into the index PyTorch rebuilds there (its vectors equal fp32's
    within 1e-4), so that `search --runtime onnx` goes on working, image queries through its fp32 tower as the
    vectors PyTorch makes; None where there is none, or it is stale."""
    if old is None or not old.onnx:
        return None
    try:
        manifest = read_export_manifest(out / EXPORT)
        manifest.check_made_with(fingerprint=model.backbone.fingerprint(), prompt_sha256=file_sha256(prompt_file))
        manifest.check_files()
    except (OnnxExportError, StaleExportError):
        return None  # a PyTorch build does not need it: it is left behind
    return OnnxImages(manifest, None, dict(old.onnx) | {"precision": "fp32"})


def _reusable(folder: Path, made_by: dict[str, str], int8: bool, log: Callable[[str], None]) -> ExportManifest | None:
    """The export in `folder` if it was made with this backbone and prompt file (and has int8 where wanted), and
    its towers are the files exported (sizes and sha256: an index build can afford reading them)."""
    if not folder.exists():
        return None
    try:
        manifest = read_export_manifest(folder)
        manifest.check_made_with(**made_by)
        manifest.check_files()
    except (OnnxExportError, StaleExportError) as exc:  # never used: said why
        log(f"exporting to ONNX again: {str(exc).split('; ')[0]}")
        return None
    if int8 and not manifest.int8:
        log(f"exporting to ONNX again: {folder} has no int8 image tower")
        return None
    return manifest


def _towers(manifest: ExportManifest, runtime: Runtime, *, int8: bool) -> OnnxTowers:
    """On as many threads as PyTorch would use; ONNX Runtime's CUDA provider on a CUDA device where it has one."""
    return OnnxTowers(manifest, int8=int8, threads=torch.get_num_threads(), cuda=runtime.device_type == "cuda")


def _measure(
    model: PromptedCLIP, fp32_tower: OnnxTowers, int8_tower: OnnxTowers, records: Sequence[Record], runtime: Runtime,
    batch_size: int, log: Callable[[str], None],
) -> dict[str, object]:
    """int8 where its top-10 agrees with fp32's on AGREEMENT of this database's own images (a seeded sample)."""
    picks = np.sort(np.random.default_rng(0).choice(len(records), min(MEASURE_IMAGES, len(records)), replace=False))
    sample = [records[i] for i in picks]
    fp32, int8, kept = [], [], []
    # Bad images are left to the build itself, which reports them.
    for batch in decode_batches(sample, model.backbone.image_transform(), runtime, batch_size=batch_size, skip_bad=True, report=BadInputReport()):
        if batch.indices:
            fp32.append(fp32_tower.encode_images(batch.images.numpy()))
            int8.append(int8_tower.encode_images(batch.images.numpy()))
            kept += [sample[i] for i in batch.indices]
    if not kept:
        return {"requested": "auto", "precision": "fp32", "agreement_at_10": None, "measured_on": 0}
    captions = caption_queries(model, kept, runtime)
    a, b = np.concatenate(fp32), np.concatenate(int8)
    agreement = top_agreement(captions, a, b) if captions is not None else top_agreement(a, a, b, queries_b=b, exclude_self=True)
    chosen = "int8" if agreement >= AGREEMENT else "fp32"
    queries = f"{len(captions)} captions" if captions is not None else "each image's neighbours"
    log(
        f"ONNX precision {chosen}: int8's top-10 shares {agreement:.3f} of fp32's ({queries}, {len(kept)} of this database's "
        f"images; int8 needs {AGREEMENT})"
    )
    return {"requested": "auto", "precision": chosen, "agreement_at_10": round(agreement, 4), "measured_on": len(kept)}


def top_agreement(
    queries: np.ndarray, a: np.ndarray, b: np.ndarray, *, queries_b: np.ndarray | None = None, exclude_self: bool = False
) -> float:
    """Mean share of each query's top-10 over images `a` that its top-10 over `b` has too (`queries_b`: the
    queries as b's tower encodes them; `exclude_self`: query i is image i, left out of its own results)."""
    k = min(TOP, len(a) - exclude_self)
    if k < 1:
        return 1.0
    scores = [queries @ a.T, (queries if queries_b is None else queries_b) @ b.T]
    if exclude_self:
        for s in scores:
            np.fill_diagonal(s, -np.inf)
    top_a, top_b = (np.argpartition(-s, k - 1, axis=1)[:, :k] for s in scores)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b, strict=True)]))
