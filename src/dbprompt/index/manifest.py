"""What an index directory holds and the manifest that says what made it.

    manifest.json        backbone, fingerprint, prompt sha256, database and its image root, index kind
                         and parameters, count, dimension; the prompt file's name and date, and the score
                         statistics that calibrate the weak-match hint (calibration.py)
    prompts.safetensors  a copy of the prompt file (searches use it; `serve` needs only the directory)
    vectors.faiss        L2-normalised image vectors; row i is image id i (ivfpq: their IVF-PQ codes)
    vectors.f16.npy      ivfpq only: the full vectors, float16, row i = image id i, searched from disk
    metadata.sqlite      one row per image: key, path, captions, file size, mtime, width, height, sha256, tags
    onnx/                built with --runtime onnx: the towers it was embedded with (onnx/manifest.py)

A manifest may come from anyone: it is read bounded in size and nesting, field by field.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..compat import BackboneId
from ..locking import OutputExistsError
from ..untrusted import loads

FORMAT = "dbprompt-index/2"
# Indexes without content hashes: still replaceable in place, no longer searchable or served.
OLD_FORMATS = ("dbprompt-index/1",)
MAX_MANIFEST_BYTES = 2**20
MANIFEST = "manifest.json"
PROMPTS = "prompts.safetensors"
VECTORS = "vectors.faiss"
METADATA = "metadata.sqlite"

KINDS = ("auto", "exact", "ivf", "hnsw", "ivfpq")
# An approximate index's search effort is tuned for recall at this k (the manifest's recall_at_10).
RECALL_K = 10
# "auto" switches from exact search to IVF above this many images: on 2 CPU cores an exact scan
# of 100k 512-d vectors costs about as much as encoding the text query (BENCHMARKS.md, "Search").
APPROX_THRESHOLD = 50_000
# ... and from IVF (every vector in RAM) to IVF-PQ (codes in RAM, vectors on disk for re-ranking)
# above this many (BENCHMARKS.md, "An index of 10M vectors").
IVFPQ_THRESHOLD = 300_000


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
    root: str  # the folder every indexed image resolves inside, symlinks resolved
    created: str
    last_build: dict[str, object] = field(default_factory=dict)
    # Absent from indexes built before they were kept:
    prompt_source: dict[str, object] = field(default_factory=dict)  # the prompt file's name and modification time
    calibration: dict[str, object] = field(default_factory=dict)  # score statistics (calibration.measure)
    onnx: dict[str, object] = field(default_factory=dict)  # built with --runtime onnx: its precision (onnx_embed.py)
    vectors: dict[str, object] = field(default_factory=dict)  # the engine and precision that made them (vectors_made.py)

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


_TYPES: dict[str, Any] = {
    "backbone": str, "pretrained": (str, type(None)), "fingerprint": str, "prompt_sha256": str, "kind": str,
    "factory": str, "count": int, "dim": int, "search_params": dict, "recall_at_10": (int, float),
    "database": str, "root": str, "created": str, "last_build": dict, "prompt_source": dict, "calibration": dict,
    "onnx": dict, "vectors": dict,
}
_OPTIONAL = {"last_build", "prompt_source", "calibration", "onnx", "vectors"}


def read_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest's JSON object, of any format version (bounded: it may come from anyone)."""
    path = Path(index_dir)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise IndexFormatError(f"{path}: not a dbprompt index (no {MANIFEST}); build one with `dbprompt index`")
    try:
        if manifest.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"over {MAX_MANIFEST_BYTES:,} bytes")
        data = loads(manifest.read_bytes())
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{manifest}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("format") not in (FORMAT, *OLD_FORMATS):
        raise IndexFormatError(f"{manifest}: not a {FORMAT} manifest")
    return data


def read_info(index_dir: str | os.PathLike) -> IndexInfo:
    path = Path(index_dir)
    data = read_manifest(path)
    manifest = path / MANIFEST
    if data["format"] != FORMAT:
        raise IndexFormatError(
            f"{path}: made by an older dbprompt ({data['format']}, no content hashes to check served images "
            "against); rebuild it with `dbprompt index` into the same directory"
        )
    data = {k: v for k, v in data.items() if k not in ("format", "dbprompt_version")}
    wrong = sorted((set(data) ^ set(_TYPES)) - _OPTIONAL)
    if wrong:
        raise IndexFormatError(f"{manifest}: bad manifest: unexpected or missing fields {wrong}")
    for name, kind in _TYPES.items():
        value = data.get(name, {})
        if not isinstance(value, kind) or isinstance(value, bool):
            raise IndexFormatError(f"{manifest}: bad manifest: {name} is {type(value).__name__}")
    if not all(isinstance(k, str) and type(v) is int for k, v in data["search_params"].items()):
        raise IndexFormatError(f"{manifest}: bad manifest: search_params must map names to integers")
    return IndexInfo(path=path, **data)


def check_replaceable(out: Path, identity: dict[str, str], force: bool) -> None:
    """An index directory is replaced as a whole: never anything but an index, and an index made from
    another database, prompt file or backbone only when `force` says so."""
    if not out.exists():
        return
    if not (out / MANIFEST).is_file():
        if not out.is_dir() or any(out.iterdir()):
            raise OutputExistsError(f"{out}: exists and is not a dbprompt index; refusing to replace it")
        return
    if force:
        return
    old = read_manifest(out)
    names = {"database": "database", "prompt_sha256": "prompt file", "fingerprint": "backbone"}
    other = [name for key, name in names.items() if old.get(key) != identity[key]]
    if other:
        raise OutputExistsError(
            f"{out}: is the index of another {' and '.join(other)} (database {old.get('database')!r}, prompt file "
            f"sha256 {str(old.get('prompt_sha256'))[:16]}..., backbone fingerprint {old.get('fingerprint')}); "
            "pass --force (force=True) to replace it"
        )
