"""Queries against indexes: text through each database's textual prompt, images through its visual prompt.

Many indexes can be searched in one process: each distinct backbone is loaded once and
every index attaches its own (small) prompts to it.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
from PIL import Image

from .backbones import BackboneAdapter, load_backbone
from .embeddings import embed_images, embed_texts
from .index import Hit, SearchIndex, open_index
from .model import PromptedCLIP
from .runtime import pick_device, resolve_bf16
from .storage import load_prompted_model

TEXT_CACHE_SIZE = 4096
# (model name, pretrained tag) -> the loaded backbone and the lock its searchers share.
_Backbones = dict[tuple[str, str | None], tuple[BackboneAdapter, threading.Lock]]


class Searcher:
    """One index with its prompted model. Thread-safe: encodes one query at a time per backbone."""

    def __init__(self, index: SearchIndex, model: PromptedCLIP, *, device: str, bf16: bool, lock: threading.Lock):
        index.check_backbone(model.backbone)
        self.index = index
        self.model = model
        self.device = device
        self.bf16 = bf16
        self._lock = lock  # shared by every searcher on the same backbone: the CPU cores are too
        self._transform = model.backbone.image_transform()
        self.encode_text = lru_cache(maxsize=TEXT_CACHE_SIZE)(self._encode_text)

    @property
    def name(self) -> str:
        return self.index.name

    def _encode_text(self, text: str) -> np.ndarray:
        if not text.strip():
            raise ValueError("the query is empty")
        with self._lock:
            vector = embed_texts(self.model, [text], self.device, self.bf16)[0]
        vector.flags.writeable = False  # shared through the cache
        return vector

    def encode_image(self, image: Image.Image) -> np.ndarray:
        pixels = self._transform(image.convert("RGB")).unsqueeze(0)
        with self._lock:
            return embed_images(self.model, pixels, self.device, self.bf16)[0]

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        return self.index.search(self.encode_text(text), k)

    def search_image(self, image: Image.Image, k: int = 10) -> list[Hit]:
        return self.index.search(self.encode_image(image), k)

    def close(self) -> None:
        self.index.close()


def open_searchers(
    index_dirs: Sequence[str | os.PathLike],
    *,
    device: str = "auto",
    bf16: bool | None = None,
    prompt_files: Sequence[str | os.PathLike | None] | None = None,
) -> dict[str, Searcher]:
    """Open indexes by directory name; each backbone is loaded once and shared.

    `prompt_files[i]`, when given, must be the very file index i was built with.
    """
    device = pick_device(device)
    bf16 = resolve_bf16(device, bf16)
    # Queries come one at a time, which FAISS runs on one thread anyway; its idle OpenMP team
    # only fights torch's for the cores (several times slower right after a torch forward).
    faiss.omp_set_num_threads(1)
    prompt_files = list(prompt_files) if prompt_files is not None else [None] * len(index_dirs)
    if len(prompt_files) != len(index_dirs):
        raise ValueError("give one prompt file (or None) per index")
    backbones: _Backbones = {}
    searchers: dict[str, Searcher] = {}
    try:
        for index_dir, prompt_file in zip(index_dirs, prompt_files):
            index = open_index(index_dir)
            if index.name in searchers:
                index.close()
                raise ValueError(f"{index_dir}: two indexes are named {index.name!r}; rename one directory")
            searchers[index.name] = _attach(index, prompt_file, backbones, device, bf16)
    except BaseException:
        for searcher in searchers.values():
            searcher.close()
        raise
    return searchers


def _attach(
    index: SearchIndex, prompt_file: str | os.PathLike | None, backbones: _Backbones, device: str, bf16: bool
) -> Searcher:
    """The index with its prompts on its backbone (loaded on first use); closes the index on failure."""
    try:
        if prompt_file is not None:
            index.check_prompt_file(prompt_file)
        info = index.info
        key = (info.backbone, info.pretrained)
        if key not in backbones:
            backbones[key] = (load_backbone(info.backbone, info.pretrained, device=device), threading.Lock())
        backbone, lock = backbones[key]
        model = load_prompted_model(Path(prompt_file or index.prompt_file), backbone, device=device)
        return Searcher(index, model, device=device, bf16=bf16, lock=lock)
    except BaseException:
        index.close()
        raise


def open_searcher(
    index_dir: str | os.PathLike,
    *,
    prompt_file: str | os.PathLike | None = None,
    device: str = "auto",
    bf16: bool | None = None,
) -> Searcher:
    """One index; `prompt_file`, when given, must be the file the index was built with."""
    (searcher,) = open_searchers([index_dir], device=device, bf16=bf16, prompt_files=[prompt_file]).values()
    return searcher

