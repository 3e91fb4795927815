"""A prompt file's towers exported: what `dbprompt export PROMPTS --onnx DIR` runs."""

from __future__ import annotations

import os
from typing import Callable

from ..backbones import load_named_backbone
from ..compat import file_sha256
from ..model import PromptedCLIP
from .export import export_onnx, require_exporter
from .manifest import ExportManifest


def export_prompts(
    prompts: str | os.PathLike,
    directory: str | os.PathLike,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    int8: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExportManifest:
    """The towers of `prompts` on its backbone (`model`/`pretrained`, else the one the file records, from local
    weights only) into `directory`, checked against PyTorch; the export records the file's sha256, so it is
    refused with any other file (`OnnxTowers.open(expect_sha256=...)`)."""
    require_exporter()  # before any weights are loaded
    named = load_named_backbone(model, pretrained) if model else None
    prompted = PromptedCLIP.from_prompt_file(prompts, named)
    return export_onnx(prompted, directory, prompt_sha256=file_sha256(prompts), int8=int8, log=log)
