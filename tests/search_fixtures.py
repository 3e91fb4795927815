"""Helpers shared by the index, API and browser tests: prompt files, indexed databases, a live server."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import uvicorn
from PIL import Image
from tinydata import write_database

from dbprompt.atomic import atomic_write_text
from dbprompt.backbones import BackboneAdapter
from dbprompt.index import IndexInfo, build_index
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig


def make_prompt_file(path: Path, backbone: BackboneAdapter, seed: int) -> Path:
    """Random prompts: a different seed is a different database's prompt file on the same backbone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PromptedCLIP(backbone, PromptConfig(text_len=4, visual_len=4, vocab=0, visual_adapter=0))
        with torch.no_grad():  # every parameter random, gates open: untrained prompts already move the vectors
            for p in model.prompts.parameters():
                p.normal_(0, 0.5)
    return model.save_prompt_file(path)


def write_folder(root: Path, images: dict[str, tuple[tuple[int, int, int], str]]) -> Path:
    """An imagefolder of solid-colour 16x16 PNGs: {file name: (rgb, caption)}; rewrites metadata.jsonl."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, (rgb, caption) in images.items():
        path = root / "images" / name
        Image.new("RGB", (16, 16), rgb).save(path)
        lines.append(json.dumps({"file_name": f"images/{name}", "text": [caption]}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def indexed_world(
    root: Path, backbone: BackboneAdapter, *, name: str, domain: str, n: int, seed: int, kind: str = "exact"
) -> tuple[Path, IndexInfo]:
    """A tiny database of `domain` (tests/tinydata.py: source or textual words) with its own prompt file, indexed as `root/name`."""
    db = write_database(root / f"{name}-db", n, domain=domain, seed=seed, image_size=32)
    prompts = make_prompt_file(root / f"{name}.safetensors", backbone, seed)
    info = build_index(db, prompts, root / name, backbone=backbone, kind=kind, progress=False)
    return db, info


@contextlib.contextmanager
def running_server(app, timeout: float = 20.0) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def holiday_tags(i: int) -> list[str]:
    """The tags of image i of a tagged world: beach or city (alternating), family on every 3rd, sunset on every 5th."""
    return [("beach", "city")[i % 2]] + ["family"] * (i % 3 == 0) + ["sunset"] * (i % 5 == 0)


def foldered_world(
    root: Path, backbone: BackboneAdapter, *, n: int, seed: int, every: int = 4, image_size: int = 16,
    tags: Callable[[int], list[str]] | None = None,
) -> tuple[Path, IndexInfo]:
    """A tiny database (tests/tinydata.py) whose images lie in two folders, `a` (every `every`-th one) and `b`
    (the rest), indexed as `root/foldered`: more than 100 images, to page past a page of 100. With `tags`
    (e.g. holiday_tags), image i's metadata has the tags `tags(i)`."""
    db = write_database(root / "foldered-db", n, seed=seed, image_size=image_size)
    rows = [json.loads(line) for line in (db / "metadata.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        folder = db / ("a" if i % every == 0 else "b")
        folder.mkdir(exist_ok=True)
        (db / row["file_name"]).rename(folder / Path(row["file_name"]).name)
        row["file_name"] = f"{folder.name}/{Path(row['file_name']).name}"
        if tags is not None:
            row["tags"] = tags(i)
    (db / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    prompts = make_prompt_file(root / "foldered.safetensors", backbone, seed)
    return db, build_index(db, prompts, root / "foldered", backbone=backbone, progress=False)


def set_weak_line(index_dir: Path, line: float) -> None:
    """Rewrite an index's calibration so that its weak-match line is `line` (no captions measured): a test's
    tiny random backbone scores nonsense and captions alike, so a test draws the line where it needs it. Written
    atomically: a server reading it half-written would refuse that instant's requests (503) as a stale index."""
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["calibration"] = {"nonsense_best": {"q10": line, "q50": line, "q90": line}, "nonsense_queries": 50}
    atomic_write_text(index_dir / "manifest.json", json.dumps(manifest))


def vectors_by_key(index_dir) -> dict:
    """{image key: its vector} of an index directory, for comparing two builds."""
    from dbprompt.index import all_vectors, load_index

    index = load_index(index_dir)
    try:
        vectors = all_vectors(index.vectors)
        return {row.key: vectors[row.id] for row in index.all_rows()}
    finally:
        index.close()
