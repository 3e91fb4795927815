"""Building an index: embed a database through its visual prompt, checkpointing as it goes.

Building never touches a finished index in place: embeddings are checkpointed in chunks in a
work directory beside the output (workdir.py: an interrupted run resumes), and the new index is
written aside and renamed over the old one. Re-running reuses the vectors of unchanged
images (same prompts, backbone, file size and mtime, and vectors of the same engine and
precision: vectors_made.py) and drops images that are gone. An index
of another database, prompt file or backbone is replaced only when asked (`force`), and no
vector that is not finite is ever written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np

from ..atomic import atomic_dir, atomic_write_text
from ..backbones import BackboneAdapter
from ..backbones.recorded import load_recorded_backbone
from ..compat import file_sha256
from ..data import Database, DataError, Record, load_database
from ..data.images import real_path
from ..model import PromptedCLIP
from ..pipeline import decode_batches, embed_images
from ..runtime import Runtime
from ..storage import read_prompt_file
from .calibration import caption_queries, measure
from .manifest import MANIFEST, METADATA, PROMPTS, VECTORS, IndexFormatError, IndexInfo, check_replaceable
from .metadata import ImageRow, write_metadata
from .onnx_embed import OnnxImages, kept_export, onnx_images
from .search import load_index
from .ondisk import CHUNK_ROWS, FULL_VECTORS, read_chunks
from .vectors import (
    KINDS, all_vectors, checked_chunks, first_non_finite, make_ivfpq_index, make_vector_index, resolve_kind, tune_search, vectors_in_ram,
)
from .vectors_made import maker, unlike, vector_kind
from .workdir import Embedded, WorkDir

if TYPE_CHECKING:
    from .distributed import RayOptions

TUNE_QUERIES = 256


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _previous(out: Path, identity: dict[str, str]) -> tuple[IndexInfo | None, list[ImageRow], dict[str, Embedded]]:
    """The existing index's rows, and its vectors when made from the same database, prompts and backbone."""
    try:
        index = load_index(out)
    except IndexFormatError:
        return None, [], {}
    try:
        info, rows = index.info, index.all_rows()
        made_by = {"database": info.database, "prompt_sha256": info.prompt_sha256, "fingerprint": info.fingerprint}
        if made_by != identity:
            return info, rows, {}
        vectors = all_vectors(index.vectors)
        return info, rows, {r.key: Embedded(r.stamp, (r.width, r.height), r.sha256, vectors[r.id]) for r in rows}
    finally:
        index.close()


def _batches(
    model: PromptedCLIP, records: Sequence[Record], runtime: Runtime, *, batch_size: int, skip_bad: bool, report,
    progress: str | None = None,
    onnx: OnnxImages | None = None,
) -> Iterator[tuple[list[int], list[tuple[int, int]], list[str], np.ndarray]]:
    """(positions in `records`, sizes, sha256s, vectors) of each batch that kept an image, embedded in this
    process (a Ray actor runs it on its part), by PyTorch or by `onnx`."""
    transform = model.backbone.image_transform()
    for batch in decode_batches(
        records, transform, runtime, batch_size=batch_size, skip_bad=skip_bad, report=report, progress=progress
    ):
        if batch.indices:
            vectors = onnx(batch.images) if onnx is not None else embed_images(model, batch.images, runtime).numpy()
            yield batch.indices, batch.sizes, batch.digests, vectors


def _embed(
    model: PromptedCLIP,
    todo: list[Record],
    stamps: dict[str, tuple[int, int]],
    work: WorkDir,
    runtime: Runtime,
    *,
    batch_size: int,
    skip_bad: bool,
    report,
    checkpoint_every: int,
    progress: bool,
    ray: RayOptions | None = None,
    onnx: OnnxImages | None = None,
) -> dict[str, Embedded]:
    """Embed `todo` in this process or on Ray, checkpointing every `checkpoint_every` images (each Ray
    part as it arrives), and on the way out of an error."""
    if ray is None:
        embedded = _batches(
            model, todo, runtime, batch_size=batch_size, skip_bad=skip_bad, report=report,
            progress="embedding" if progress and todo else None, onnx=onnx,
        )
    else:
        from .distributed import embed_on_ray

        embedded = embed_on_ray(
            _batches, model, todo, runtime, ray, batch_size=batch_size, skip_bad=skip_bad, report=report,
            part_size=checkpoint_every, progress=progress,
        )
    done: dict[str, Embedded] = {}
    pending: dict[str, Embedded] = {}
    try:
        with contextlib.closing(embedded):
            for indices, sizes, digests, vectors in embedded:
                keys = [todo[i].key for i in indices]
                bad = first_non_finite(vectors)
                if bad is not None:
                    raise ValueError(f"the vector of {keys[bad]} is not finite (NaN or Inf): the prompts or backbone are broken")
                for key, size, digest, vector in zip(keys, sizes, digests, vectors):
                    pending[key] = Embedded(stamps[key], size, digest, vector)
                if ray is not None or len(pending) >= checkpoint_every:
                    work.save(pending)
                    done.update(pending)
                    pending = {}
    finally:
        work.save(pending)
    done.update(pending)
    return done


def _in_chunks(known: dict[str, Embedded], kept: Sequence[Record]) -> Iterator[np.ndarray]:
    """The vectors of `kept` in order, in chunks: an ivfpq index streams them to disk instead of holding a second copy."""
    for i in range(0, len(kept), CHUNK_ROWS):
        yield np.stack([known[r.key].vector for r in kept[i : i + CHUNK_ROWS]]).astype(np.float32, copy=False)


def _iso(timestamp: float | None) -> str:
    """A UTC time (now, for None) as the manifest writes it."""
    when = datetime.now(timezone.utc) if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)
    return when.isoformat(timespec="seconds")


def write_index(
    out_dir: str | os.PathLike,
    prompt_file: str | os.PathLike,
    vectors: np.ndarray | Iterable[np.ndarray],
    rows: Sequence[ImageRow],
    *,
    kind: str = "auto",
    tune_queries: np.ndarray | None = None,
    database: str = "",
    root: str | os.PathLike | None = None,
    last_build: dict[str, object] | None = None,
    calibration: dict[str, object] | None = None,
    force: bool = False,
    onnx: OnnxImages | None = None,
    made_by: dict[str, str] | None = None,
) -> IndexInfo:
    """Write an index directory from unit vectors (row i of `vectors` is image `rows[i]`), atomically.

    `vectors`: one array, or chunks of rows in order. An ivfpq index is built from them in bounded
    memory (its full vectors go to disk as they arrive); the other kinds hold them all in RAM.
    An approximate index is tuned on `tune_queries` (default: a sample of the vectors themselves).
    `root`: the folder the server may send images from (default: the deepest one holding them all).
    `calibration`: the score statistics of the weak-match hint (calibration.measure; default: none, the legacy line).
    `onnx`: the export the vectors were embedded with, kept in the index; `made_by`: the engine and precision
    that made the vectors (vectors_made.py), kept in the manifest.
    """
    if not rows or any(row.id != i for i, row in enumerate(rows)):
        raise ValueError("rows must be numbered 0..n-1, one per vector, at least one")
    out, pf = Path(out_dir), read_prompt_file(prompt_file)
    sha = file_sha256(prompt_file)
    check_replaceable(out, {"database": database, "prompt_sha256": sha, "fingerprint": pf.fingerprint}, force)
    resolved = resolve_kind(kind, len(rows))
    with atomic_dir(out) as tmp:
        if resolved == "ivfpq":
            index, factory = make_ivfpq_index(tmp, checked_chunks(vectors, rows), len(rows))
            stored, indexed = index.full, read_chunks(tmp / FULL_VECTORS)
        else:
            stored = indexed = vectors_in_ram(vectors, rows)
            index, factory = make_vector_index(stored, resolved)
        if tune_queries is None:
            sample = np.random.default_rng(0).choice(len(rows), min(TUNE_QUERIES, len(rows)), replace=False)
            tune_queries = np.asarray(stored[np.sort(sample)], dtype=np.float32)
        params, recall = tune_search(index, resolved, indexed, tune_queries)
        info = IndexInfo(
            path=out,
            backbone=pf.backbone,
            pretrained=pf.pretrained,
            fingerprint=pf.fingerprint,
            prompt_sha256=sha,
            kind=resolved,
            factory=factory,
            count=len(rows),
            dim=index.d,
            search_params=params,
            recall_at_10=round(recall, 4),
            database=database,
            root=str(real_path(root if root is not None else os.path.commonpath([r.path.parent for r in rows]))),
            created=_iso(None),
            last_build=last_build or {},
            prompt_source={"name": Path(prompt_file).name, "modified": _iso(Path(prompt_file).stat().st_mtime)},
            calibration=calibration or {}, onnx=onnx.place(tmp) if onnx is not None else {}, vectors=made_by or {},
        )
        shutil.copyfile(prompt_file, tmp / PROMPTS)
        faiss.write_index(index.base if resolved == "ivfpq" else index, str(tmp / VECTORS))
        write_metadata(tmp / METADATA, rows)
        atomic_write_text(tmp / MANIFEST, json.dumps(info.to_json(), indent=2) + "\n")
    return info


def build_index(
    db: str | os.PathLike | Database,
    prompt_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    kind: str = "auto",
    runtime: Runtime | None = None,
    skip_bad: bool = False,
    backbone: BackboneAdapter | None = None,
    checkpoint_every: int = 1024,
    progress: bool = True,
    force: bool = False,
    ray: RayOptions | None = None,
    on_checkpoint: Callable[[int], None] = lambda images: None,
    onnx_precision: str = "auto",
    log: Callable[[str], None] = lambda line: None,
) -> IndexInfo:
    """Create or update the index of `db` (a path or a loaded Database) searched through `prompt_file`.

    Only new or changed images are embedded; a run interrupted at any point resumes where
    its last checkpoint ended, and `out_dir` is either the old index or the new one, never a mix.
    An index of another database, prompt file or backbone in `out_dir` is replaced only with `force`.
    Without `backbone`, the one the prompt file records is loaded from local weights only. With `ray`, the
    images are embedded on Ray actors, `checkpoint_every` at a time; `on_checkpoint(images)` follows each save.
    With `runtime.engine` "onnx", by the prompt file's towers on ONNX Runtime (`onnx_precision`: onnx_embed.py).
    """
    if batch_size < 1 or checkpoint_every < 1:
        raise ValueError("batch_size and checkpoint_every must be at least 1")
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    if ray is not None:
        from .distributed import check_ray

        check_ray()  # before the database is read, not after
    out, prompt_file = Path(out_dir), Path(prompt_file)
    pf = read_prompt_file(prompt_file)
    database = db if isinstance(db, Database) else load_database(db, skip_bad=skip_bad)
    identity = {"database": str(database.source), "prompt_sha256": file_sha256(prompt_file), "fingerprint": pf.fingerprint}
    check_replaceable(out, identity, force)  # before hours of embedding, not after
    runtime = runtime or Runtime.resolve()
    if ray is not None and runtime.engine == "onnx":
        raise ValueError("--ray embeds with PyTorch on Ray actors, --runtime onnx in this process: give one of them")
    if backbone is None:
        backbone = load_recorded_backbone(pf.backbone_id, device=runtime.device, source=str(prompt_file))
    model = PromptedCLIP.from_prompt_file(prompt_file, backbone, device=runtime.device)
    vectors_of = identity | {"fingerprint": backbone.fingerprint()}  # what a reusable vector was made from
    records = database.records
    # A shard's members share its stamp: a rewritten shard is embedded again, an untouched one is not.
    by_path = {path: _stamp(path) for path in dict.fromkeys(r.path for r in records)}
    stamps = {r.key: by_path[r.path] for r in records}

    with WorkDir(out, on_checkpoint) as work:
        old_info, old_rows, known = _previous(out, vectors_of)
        onnx = kept_export(model, prompt_file, out, old_info) if runtime.engine != "onnx" else onnx_images(
            model, prompt_file, out, work.path, runtime, onnx_precision, records, old_info, identity["database"],
            batch_size=batch_size, log=log,
        )
        made = maker(runtime, onnx)
        if known and (why := unlike(old_info, made)):
            log(why)
            known = {}
        work.open(vectors_of | {"vectors": vector_kind(made)})
        known.update(work.load())
        todo = [r for r in records if r.key not in known or known[r.key].stamp != stamps[r.key]]
        fresh = _embed(
            model, todo, stamps, work, runtime, batch_size=batch_size, skip_bad=skip_bad, report=database.report,
            checkpoint_every=checkpoint_every, progress=progress, ray=ray, onnx=onnx if runtime.engine == "onnx" else None,
        )
        known.update(fresh)
        kept = [r for r in records if r.key in known and known[r.key].stamp == stamps[r.key]]
        if not kept:
            raise DataError(str(database.source), "no usable images", "; ".join(map(str, database.report.items[:3])))
        rows = [
            ImageRow(i, r.key, r.path, r.captions, *stamps[r.key], *known[r.key].size, known[r.key].sha256, r.tags)
            for i, r in enumerate(kept)
        ]
        resolved = resolve_kind(kind, len(rows))
        same_onnx = old_info is not None and (onnx is None or onnx.kept_by(old_info)) and old_info.vectors == made
        if same_onnx and not todo and rows == old_rows and old_info.kind == resolved and old_info.calibration:
            work.remove()
            return old_info  # nothing changed (an index built without the weak-match statistics is written again)
        captions = caption_queries(model, kept, runtime)
        gone = {r.key for r in old_rows} - {r.key for r in rows}
        info = write_index(
            out, prompt_file, _in_chunks(known, kept), rows, kind=resolved, tune_queries=captions if resolved != "exact" else None,
            database=identity["database"], root=database.root, calibration=measure(model, runtime, _in_chunks(known, kept), captions),
            force=force, onnx=onnx, made_by=made, last_build={
                "embedded": len(fresh), "reused": len(rows) - len(fresh), "removed": len(gone),
                "skipped": [str(item) for item in database.report.items],
            },
        )
        work.remove()
    return info
