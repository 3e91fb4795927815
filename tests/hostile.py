"""Inputs an attacker or a careless user would hand in: escaping databases, image bombs, forged files."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save


def png_bomb(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height pixels (1-bit grey)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def escaping_database(root: Path) -> tuple[Path, Path]:
    """An imagefolder of 4 good images whose metadata lines 5-7 name a file outside it: by absolute
    path, by climbing out with `..`, and through a symlink inside its images/ folder.

    Returns (database, the outside folder holding `secret.png`).
    """
    db, outside = root / "db", root / "outside"
    (db / "images").mkdir(parents=True)
    outside.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(db / "images" / f"{i}.png")
    secret = outside / "secret.png"
    Image.new("RGB", (16, 16), (0, 255, 0)).save(secret)
    os.symlink(secret, db / "images" / "link.png")
    rows = [{"file_name": f"images/{i}.png", "text": f"red number {i}"} for i in range(4)]
    rows += [
        {"file_name": str(secret), "text": "absolute"},
        {"file_name": "../outside/secret.png", "text": "climbing"},
        {"file_name": "images/link.png", "text": "symlink"},
    ]
    (db / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return db, outside


def forge_prompt_file(
    src: Path, dst: Path, *, metadata: dict[str, str] | None = None, tensors: dict[str, torch.Tensor] | None = None
) -> Path:
    """A copy of prompt file `src` with some metadata fields and tensors replaced (None value: removed)."""
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
        data = {k: f.get_tensor(k) for k in f.keys()}
    for target, changes in ((meta, metadata or {}), (data, tensors or {})):
        for key, value in changes.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    dst.write_bytes(save(data, metadata=meta))
    return dst
