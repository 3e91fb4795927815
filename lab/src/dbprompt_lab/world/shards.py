"""The synthetic world as shards: webdataset tars and parquet files laid out as img2dataset writes them."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dbprompt.atomic import atomic_path

# img2dataset's keys: the shard number, then the sample's number within it.
_KEY_DIGITS = 4


def _samples(imagefolder: Path) -> list[tuple[str, bytes, list[str]]]:
    """(file stem, image bytes, captions) of each line of an imagefolder's metadata.jsonl."""
    rows = [json.loads(line) for line in (imagefolder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return [(Path(r["file_name"]).stem, (imagefolder / r["file_name"]).read_bytes(), r["text"]) for r in rows]


def _chunks(items: list, per_shard: int) -> list[list]:
    return [items[i : i + per_shard] for i in range(0, len(items), per_shard)]


def write_webdataset(imagefolder: str | os.PathLike, out_dir: str | os.PathLike, per_shard: int = 100) -> Path:
    """`out_dir/00000.tar ...`: per sample `KEY.png`, `KEY.txt` (the first caption) and `KEY.json`
    (img2dataset's fields, all captions under "captions"); each shard written atomically."""
    out = Path(out_dir)
    for shard, chunk in enumerate(_chunks(_samples(Path(imagefolder)), per_shard)):
        with atomic_path(out / f"{shard:05d}.tar") as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for i, (_, image, captions) in enumerate(chunk):
                key = f"{shard:05d}{i:0{_KEY_DIGITS}d}"
                meta = {"key": key, "caption": captions[0], "captions": captions, "status": "success"}
                for ext, data in (("png", image), ("txt", captions[0].encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
    return out


def write_parquet(imagefolder: str | os.PathLike, out_dir: str | os.PathLike, per_file: int = 100, row_group: int = 25) -> Path:
    """`out_dir/00000.parquet ...` with img2dataset's columns: key, jpg (the PNG bytes, as img2dataset
    names the column whatever the encoding), caption, status; row groups of `row_group` rows."""
    out = Path(out_dir)
    for shard, chunk in enumerate(_chunks(_samples(Path(imagefolder)), per_file)):
        table = pa.table({
            "key": [f"{shard:05d}{i:0{_KEY_DIGITS}d}" for i in range(len(chunk))],
            "jpg": pa.array([image for _, image, _ in chunk], pa.binary()),
            "caption": [captions for _, _, captions in chunk],
            "status": ["success"] * len(chunk),
        })
        with atomic_path(out / f"{shard:05d}.parquet") as tmp:
            pq.write_table(table, tmp, row_group_size=row_group)
    return out
