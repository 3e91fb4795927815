"""Small databases built in tmp_path for the reader tests: images, metadata lines, records by key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dbprompt.data import Record


def make_image(path: Path, color: str = "red", fmt: str = "PNG", mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8), color if mode == "RGB" else 1).save(path, fmt)
    return path


def make_truncated(path: Path, keep: float = 0.5) -> Path:
    """A JPEG cut short: at 0.5 the header is intact and only the pixel data is missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def by_key(records: list[Record]) -> dict[str, Record]:
    return {r.key: r for r in records}


def karpathy_file(tmp_path: Path, images: list) -> Path:
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path
