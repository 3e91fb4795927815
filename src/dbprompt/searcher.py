"""Queries against indexes: text through each database's textual prompt, images through its visual prompt.

Many indexes can be searched in one process: each distinct backbone is loaded once and
every index attaches its own (small) prompts to it. The backbone an index records is loaded
from local weights only (`backbones.recorded`); `backbone=` names one instead (its fingerprint
is checked all the same). With `--runtime onnx` and no backbone named, an index whose ONNX export
has what queries need is searched through the export alone (index/onnx_queries.py): no backbone
is loaded and torch is never imported. Results leave out images whose file is gone, and `IndexSet`, what
the server serves, reopens an index whose directory `dbprompt index` replaced, without a restart.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import faiss
import numpy as np
from PIL import Image

from .compat import check_backbone, check_prompt_file
from .data.images import open_image
from .index.files import present
from .index.manifest import MANIFEST, IndexInfo
from .index.metadata import ImageRow
from .index.onnx_queries import OnnxQueries, index_towers
from .index.search import Hits, SearchIndex, load_index
from .runtime import Runtime

if TYPE_CHECKING:  # torch: imported where a backbone is loaded, never by a server running ONNX towers alone
    from .backbones import BackboneAdapter
    from .model import PromptedCLIP

TEXT_CACHE_SIZE = 4096
# (model name, pretrained tag), or EXPLICIT -> the loaded backbone and the lock its searchers share.
_Backbones = dict[tuple[str, str | None], tuple["BackboneAdapter", threading.Lock]]
EXPLICIT = ("", None)
# A database name someone chose (`serve NAME=DIR`): it goes into URLs, so it stays plain.
DATABASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Index directories, each named after itself, or (name, directory) pairs, or a mapping of names to directories.
IndexDirs = Sequence[str | os.PathLike | tuple[str, str | os.PathLike]] | Mapping[str, str | os.PathLike]


class Searcher:
    """One index with what encodes its queries. Thread-safe: encodes one query at a time per backbone."""

    def __init__(
        self, index: SearchIndex, model: PromptedCLIP | None, runtime: Runtime, lock: threading.Lock | None = None,
        *, queries: OnnxQueries | None = None,
    ):
        """`model` encodes the queries (through its towers' ONNX export where runtime.engine is "onnx"); None:
        `queries` does, the export alone (no backbone, no torch)."""
        self.index = index
        self.model = model
        self.runtime = runtime
        self._lock = lock or threading.Lock()  # shared by every searcher on the same backbone: the cores are too
        self._queries = queries if model is None else _ModelQueries(index.info, model, runtime)
        self.encode_text = lru_cache(maxsize=TEXT_CACHE_SIZE)(self._encode_text)
        self._closed = False

    @property
    def name(self) -> str:
        return self.index.name

    def _encode_text(self, text: str) -> np.ndarray:
        if not text.strip():
            raise ValueError("the query is empty")
        with self._lock:
            vector = self._queries.encode_text(text)
        vector.flags.writeable = False  # shared through the cache
        return vector

    def encode_image(self, image: Image.Image) -> np.ndarray:
        pixels = self._queries.prepare_image(image.convert("RGB"))
        with self._lock:
            return self._queries.encode_image(pixels)

    def search_text(self, text: str, k: int = 10, *, offset: int = 0, folder: str | None = None, tag: str | None = None) -> Hits:
        self._check_open()
        if not isinstance(text, str):
            raise TypeError(f"a text query is a str, got {type(text).__name__}")
        where = self._filter(folder, tag)  # a bad filter is refused before the query is encoded
        return self.index.search(self.encode_text(text), k, keep=present, offset=offset, where=where)

    def search_image(
        self, image: Image.Image, k: int = 10, *, offset: int = 0, folder: str | None = None, tag: str | None = None
    ) -> Hits:
        self._check_open()
        if not isinstance(image, Image.Image):
            raise TypeError(f"an image query is a PIL image, got {type(image).__name__}")
        where = self._filter(folder, tag)
        return self.index.search(self.encode_image(image), k, keep=present, offset=offset, where=where)

    def search(
        self, query: str | Image.Image | os.PathLike, k: int = 10, *, offset: int = 0, folder: str | None = None,
        tag: str | None = None,
    ) -> Hits:
        """Text (a str), an image, or the path of an image file; the k best images after the first `offset`,
        best first, only from `folder` (relative to the index's root; "" the root itself) and only those tagged
        `tag` (one of `index.tags`), when given. Their `missing`: better-ranked images whose files are gone; see
        `missing_note`."""
        if isinstance(query, str):
            return self.search_text(query, k, offset=offset, folder=folder, tag=tag)
        if isinstance(query, Image.Image):
            return self.search_image(query, k, offset=offset, folder=folder, tag=tag)
        if not isinstance(query, os.PathLike):
            raise TypeError(f"a query is text (str), a PIL image or an image file's path (os.PathLike), got {type(query).__name__}")
        self._check_open()
        return self.search_image(open_image(query), k, offset=offset, folder=folder, tag=tag)

    def _filter(self, folder: str | None, tag: str | None) -> Callable[[ImageRow], bool] | None:
        """Which images a search may return: those in `folder` and tagged `tag` (None: any). Neither is
        repeated in an error, which a server sends back to whoever sent them."""
        if folder is not None and folder not in self.index.folders:
            raise ValueError("the index has no images in the folder asked for (its folders: index.folders, or /api/databases)")
        if tag is not None:
            tag = tag.strip()  # as the database readers read tags
            if tag not in self.index.tags:
                raise ValueError("no image of the index has the tag asked for (its tags: index.tags, or /api/databases)")
        if folder is None and tag is None:
            return None
        return lambda row: (folder is None or self.index.folder_of(row) == folder) and (tag is None or tag in row.tags)

    def missing_note(self, hits: Hits) -> str | None:
        """What to tell the user when most of a query's best images are gone from where they were indexed."""
        if not hits.mostly_missing:
            return None
        return (
            f"{hits.missing} of the best-matching images are no longer where the index found them, under "
            f"{self.index.root}: moved, deleted, or on a drive that is not mounted. Mount or restore it, or index "
            "the collection again where it is now."
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.index.info.path}: this index was closed; open it again (dbprompt.open_index)")

    def close(self) -> None:
        self._closed = True
        self.index.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ModelQueries:
    """Queries through a prompted model: tokenized and preprocessed by its backbone, encoded by its towers on
    PyTorch or, where runtime.engine is "onnx", by their export in the index."""

    def __init__(self, info: IndexInfo, model: PromptedCLIP, runtime: Runtime):
        import torch

        check_backbone(str(info.path), info.backbone_id, model.backbone)
        self.model = model
        self.runtime = runtime
        self._transform = model.backbone.image_transform()
        self._onnx = index_towers(info, runtime, threads=torch.get_num_threads()) if runtime.engine == "onnx" else None

    def encode_text(self, text: str) -> np.ndarray:
        from .pipeline import encode_texts

        if self._onnx is not None:
            return self._onnx.encode_texts(self.model.tokenize([text]).numpy())[0]
        return encode_texts(self.model, [text], self.runtime)[0].numpy()

    def prepare_image(self, image: Image.Image) -> Any:
        return self._transform(image).unsqueeze(0)

    def encode_image(self, pixels: Any) -> np.ndarray:
        from .pipeline import embed_images

        if self._onnx is not None:
            return self._onnx.encode_images(pixels.numpy())[0]
        return embed_images(self.model, pixels, self.runtime)[0].numpy()


def open_searchers(
    index_dirs: Sequence[str | os.PathLike],
    runtime: Runtime | None = None,
    *,
    prompt_files: Sequence[str | os.PathLike | None] | None = None,
    backbone: BackboneAdapter | None = None,
) -> dict[str, Searcher]:
    """Open indexes by directory name; each backbone is loaded once and shared.

    `prompt_files[i]`, when given, must be the very file index i was built with. `backbone`, when
    given, serves every index (each checks its fingerprint); else each index's recorded one is loaded.
    """
    runtime = runtime or Runtime.resolve()
    prompt_files = list(prompt_files) if prompt_files is not None else [None] * len(index_dirs)
    if len(prompt_files) != len(index_dirs):
        raise ValueError("give one prompt file (or None) per index")
    return _open_all(named_dirs(index_dirs), prompt_files, _backbones_with(backbone), runtime)


def named_dirs(index_dirs: IndexDirs) -> dict[str, Path]:
    """Index directories by database name: a directory is named after itself, a (name, directory) pair
    by its name (letters, digits, '.', '_', '-'); two of one name are refused, since one would hide the other."""
    pairs = index_dirs.items() if isinstance(index_dirs, Mapping) else index_dirs
    named: dict[str, Path] = {}
    for item in pairs:
        if isinstance(item, tuple):
            name, index_dir = item[0], Path(item[1])
            if not DATABASE_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} (for {index_dir}): a database name is 1 to 64 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit"
                )
        else:
            index_dir = Path(item)
            name = index_dir.name
        if name in named:
            raise ValueError(f"two databases are named {name!r} ({named[name]} and {index_dir}); name them apart with NAME=DIR")
        named[name] = index_dir
    return named


def _backbones_with(backbone: BackboneAdapter | None) -> _Backbones:
    return {} if backbone is None else {EXPLICIT: (backbone, threading.Lock())}


def _open_all(
    named: dict[str, Path], prompt_files: Sequence[str | os.PathLike | None], backbones: _Backbones, runtime: Runtime
) -> dict[str, Searcher]:
    # Queries come one at a time, which FAISS runs on one thread anyway; its idle OpenMP team
    # only fights torch's for the cores (several times slower right after a torch forward).
    faiss.omp_set_num_threads(1)
    searchers: dict[str, Searcher] = {}
    try:
        for (name, index_dir), prompt_file in zip(named.items(), prompt_files):
            searchers[name] = _attach(load_index(index_dir), prompt_file, backbones, runtime)
    except BaseException:
        for searcher in searchers.values():
            searcher.close()
        raise
    return searchers


def _attach(index: SearchIndex, prompt_file: str | os.PathLike | None, backbones: _Backbones, runtime: Runtime) -> Searcher:
    """The index with its prompts on its backbone (loaded on first use); closes the index on failure."""
    try:
        if prompt_file is not None:
            check_prompt_file(str(index.info.path), index.info.prompt_sha256, prompt_file)
        info = index.info
        queries = OnnxQueries.of(info, runtime) if runtime.engine == "onnx" and EXPLICIT not in backbones else None
        if queries is not None:
            return Searcher(index, None, runtime, queries=queries)
        from .backbones.recorded import load_recorded_backbone
        from .model import PromptedCLIP

        key = EXPLICIT if EXPLICIT in backbones else (info.backbone, info.pretrained)
        if key not in backbones:
            loaded = load_recorded_backbone(info.backbone_id, device=runtime.device, source=str(info.path))
            backbones[key] = (loaded, threading.Lock())
        backbone, lock = backbones[key]
        model = PromptedCLIP.from_prompt_file(Path(prompt_file or index.prompt_file), backbone, device=runtime.device)
        return Searcher(index, model, runtime, lock)
    except BaseException:
        index.close()
        raise


def open_index(
    index_dir: str | os.PathLike,
    *,
    prompt_file: str | os.PathLike | None = None,
    runtime: Runtime | None = None,
    backbone: BackboneAdapter | None = None,
) -> Searcher:
    """An index ready to search by text or image; `prompt_file`, when given, must be the file it was built with."""
    (searcher,) = open_searchers([index_dir], runtime, prompt_files=[prompt_file], backbone=backbone).values()
    return searcher


class StaleIndexError(RuntimeError):
    """An index whose directory changed and cannot be opened again: queries wait until it can."""


@dataclass(frozen=True)
class _Entry:
    path: Path
    stamp: tuple[int, ...] | None  # the manifest's identity when this entry was made
    info: IndexInfo  # of the last index opened from this directory
    searcher: Searcher | None  # None: stale, for `problem`
    problem: str | None = None


def _stamp(index_dir: Path) -> tuple[int, ...] | None:
    """Changes whenever `dbprompt index` writes the directory anew (a new manifest file)."""
    try:
        st = os.stat(index_dir / MANIFEST)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class IndexSet:
    """The indexes a server serves, by name. Each request gets the index its directory holds now:
    a replaced index is opened again (one stat per request notices), and one that cannot be opened
    is stale (`StaleIndexError`) until its directory changes again. Thread-safe."""

    def __init__(self, index_dirs: IndexDirs, runtime: Runtime | None = None, *, backbone: BackboneAdapter | None = None):
        self._runtime = runtime or Runtime.resolve()
        self._backbones = _backbones_with(backbone)  # shared with the indexes reopened later
        self._lock = threading.Lock()
        named = named_dirs(index_dirs)
        stamps = [_stamp(d) for d in named.values()]  # before opening: a change meanwhile is seen next time
        searchers = _open_all(named, [None] * len(named), self._backbones, self._runtime)
        self._entries = {
            name: _Entry(s.index.info.path, stamp, s.index.info, s) for (name, s), stamp in zip(searchers.items(), stamps)
        }

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> _Entry:
        """The current entry of `name` (KeyError for a name not served), reopened if its directory changed."""
        entry = self._entries[name]
        stamp = _stamp(entry.path)
        if stamp is None and entry.searcher is not None:
            # Gone for the instant between `dbprompt index`'s two renames (or deleted): the index
            # already open still answers, rather than refusing the requests of that instant.
            return entry
        if stamp != entry.stamp:
            with self._lock:
                entry = self._entries[name]
                if stamp != entry.stamp:
                    entry = self._entries[name] = self._reopen(entry, stamp)
        return entry

    def __getitem__(self, name: str) -> Searcher:
        entry = self.entry(name)
        if entry.searcher is None:
            raise StaleIndexError(entry.problem)
        return entry.searcher

    def _reopen(self, old: _Entry, stamp: tuple[int, ...] | None) -> _Entry:
        # The old searcher is not closed: requests under way finish on it, and it is freed after them.
        try:
            searcher = _attach(load_index(old.path), None, self._backbones, self._runtime)
        except (ValueError, OSError) as exc:  # every bad-index and bad-prompt-file error is a ValueError
            problem = f"{old.path} changed and cannot be opened again, so its queries are refused: {exc}"
            return _Entry(old.path, stamp, old.info, None, problem)
        return _Entry(old.path, stamp, searcher.index.info, searcher)

    def close(self) -> None:
        for entry in self._entries.values():
            if entry.searcher is not None:
                entry.searcher.close()
