"""What made an index's vectors: the engine and precision that embedded them, kept in its manifest (`vectors`),
so that an update never puts vectors of two kinds in one index.

An update reuses the vectors of unchanged images (and an interrupted build its checkpoints) only when they are
of the kind this build makes; else it embeds every image again, saying why in one line. fp32 vectors of
PyTorch and of ONNX Runtime are one kind: an export whose fp32 towers differ from PyTorch's by more than 1e-4
is refused (onnx/export.py). An index built before the record was kept has none, and its vectors count as
the kind the update makes (nothing says otherwise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..runtime import Runtime
from .manifest import IndexInfo

if TYPE_CHECKING:
    from .onnx_embed import OnnxImages


def maker(runtime: Runtime, onnx: OnnxImages | None) -> dict[str, str]:
    """The engine and precision of the vectors a build embeds (`onnx`: the image tower of an ONNX build)."""
    if runtime.engine == "onnx" and onnx is not None:
        return {"engine": "onnx", "precision": str(onnx.record["precision"])}
    return {"engine": "torch", "precision": "bf16" if runtime.bf16 else "fp32"}


def vector_kind(made: dict[str, object]) -> str:
    """Vectors of one kind may share an index: fp32 of either engine, else one engine's precision."""
    return "fp32" if made.get("precision") == "fp32" else f"{made.get('engine')} {made.get('precision')}"


def unlike(old: IndexInfo | None, made: dict[str, str]) -> str | None:
    """Why the vectors of the index `old` cannot be reused by a build that makes `made`; None where they can."""
    if old is None or not old.vectors or vector_kind(old.vectors) == vector_kind(made):
        return None
    return (
        f"embedding every image again: {old.path}'s vectors were made by {old.vectors.get('engine')} "
        f"{old.vectors.get('precision')}, this build's by {made['engine']} {made['precision']}"
    )
