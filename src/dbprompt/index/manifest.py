"""What an index directory holds and the manifest that says what made it.

    manifest.json        backbone, fingerprint, prompt sha256, index kind and parameters, count, dimension
    prompts.safetensors  a copy of the prompt file (searches use it; `serve` needs only the directory)
    vectors.faiss        L2-normalised image vectors; row i is image id i
    metadata.sqlite      one row per image: key, path, captions, file size, mtime, width, height
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..compat import BackboneId

FORMAT = "dbprompt-index/1"
MANIFEST = "manifest.json"
PROMPTS = "prompts.safetensors"
VECTORS = "vectors.faiss"
METADATA = "metadata.sqlite"

KINDS = ("auto", "exact", "ivf", "hnsw")
# "auto" switches from exact search to IVF above this many images: on 2 CPU cores an exact scan
# of 100k 512-d vectors costs about as much as encoding the text query (BENCHMARKS.md, "Search").
APPROX_THRESHOLD = 50_000


class IndexFormatError(ValueError):
    """An index directory that is missing, incomplete, or does not match what it is used with."""


@dataclass(frozen=True)
class IndexInfo:
    """The manifest of an index directory."""

    path: Path
    backbone: str
    pretrained: str | None
    fingerprint: str
    prompt_sha256: str
    kind: str
    factory: str
    count: int
    dim: int
    search_params: dict[str, int]
    recall_at_10: float
    database: str
    created: str
    last_build: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def backbone_id(self) -> BackboneId:
        return BackboneId(self.backbone, self.pretrained, self.fingerprint)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("path")
        return {"format": FORMAT, "dbprompt_version": __version__, **data}


def read_info(index_dir: str | os.PathLike) -> IndexInfo:
    path = Path(index_dir)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise IndexFormatError(f"{path}: not a dbprompt index (no {MANIFEST}); build one with `dbprompt index`")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{manifest}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexFormatError(f"{manifest}: not a {FORMAT} manifest")
    data = {k: v for k, v in data.items() if k not in ("format", "dbprompt_version")}
    try:
        return IndexInfo(path=path, **data)
    except TypeError as exc:
        raise IndexFormatError(f"{manifest}: bad manifest: {exc}") from None
