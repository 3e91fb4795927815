"""Shard inputs: webdataset tars and parquet files for train, eval and index, served back by the server.

Bad input follows the rules of the other formats: a bad member or row is a DataError naming the
shard and member (or parquet file and row) and the problem, or a counted skip with --skip-bad.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from audit import watching
from fastapi.testclient import TestClient
from hostile import png_bomb
from PIL import Image
from search_fixtures import make_prompt_file
from tinydata import write_database, write_parquet, write_webdataset
from torchvision.transforms import ToTensor

from dbprompt.cli import main
from dbprompt.data import DataError, detect_format, load_database
from dbprompt.data.shards import expand_braces
from dbprompt.index import build_index
from dbprompt.pipeline import decode_batches
from dbprompt.runtime import Runtime
from dbprompt.searcher import open_index
from dbprompt.server import create_app
from dbprompt.storage import read_prompt_file


def png(color: str = "red", size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def cut_png() -> bytes:
    """A noisy PNG cut in the middle of its pixel data."""
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, "PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def write_tar(path: Path, members: list[tuple]) -> Path:
    """Members (name, bytes) or (name, bytes, tar type), in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data, *kind in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if kind:
                info.type, info.linkname, info.size = kind[0], "/etc/passwd", 0
            tar.addfile(info, io.BytesIO(data) if not kind else None)
    return path


def sample(key: str, caption: str = "a red square", image: bytes | None = None, **meta) -> list[tuple]:
    members = [(f"{key}.png", image if image is not None else png())]
    members.append((f"{key}.txt", caption.encode()))
    if meta:
        members.append((f"{key}.json", json.dumps(meta).encode()))
    return members


def decoded(db, skip_bad: bool) -> list[str]:
    """Keys of the records that decode, through the pipeline every command uses."""
    kept = []
    for batch in decode_batches(db.records, ToTensor(), Runtime(), batch_size=2, skip_bad=skip_bad, report=db.report):
        kept += [db.records[i].key for i in batch.indices]
    return kept


# ---- reading ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    db = write_database(base / "db", 30, seed=3, image_size=32)
    return db, write_webdataset(db, base / "wds", per_shard=10), write_parquet(db, base / "pq", per_file=10, row_group=4)


def pixels(db) -> torch.Tensor:
    return torch.cat([batch.images for batch in decode_batches(db.records, ToTensor(), Runtime(), batch_size=8)])


def test_both_shard_formats_read_as_the_imagefolder_they_came_from(world):
    db, wds, pq_dir = world
    folder = load_database(db)
    for source, suffix in ((wds, "tar"), (pq_dir, "parquet"), (f"{wds}/{{00000..00002}}.tar", "tar")):
        assert detect_format(source) == ("webdataset" if suffix == "tar" else "parquet")
        shards = load_database(source)
        assert [r.key for r in shards.records[:2]] == [f"00000.{suffix}/000000000", f"00000.{suffix}/000000001"]
        assert [r.captions[0] for r in shards.records] == [r.captions[0] for r in folder.records]
        assert torch.equal(pixels(shards), pixels(folder))  # read member by member, nothing extracted
    assert load_database(pq_dir).records[5].captions == folder.records[5].captions  # parquet keeps every caption
    assert load_database(f"{pq_dir}/00001.parquet").records[0].key == "00001.parquet/000010000"


def test_brace_patterns_expand_as_webdataset_s():
    assert expand_braces("a/{008..011}.tar") == ["a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]
    assert expand_braces("{x,y}/{0..1}.tar") == ["x/0.tar", "x/1.tar", "y/0.tar", "y/1.tar"]
    with pytest.raises(ValueError, match="empty"):
        expand_braces("{3..1}.tar")


def test_split_comes_from_the_json_or_column_else_from_the_key_s_hash(tmp_path):
    members = sample("a", split="train") + sample("b", split="validation") + sample("c", split="test")
    records = load_database(write_tar(tmp_path / "t" / "0.tar", members)).records
    assert [r.split for r in records] == ["train", "val", "test"]
    table = pa.table({"jpg": [png()] * 2, "caption": ["x", "y"], "split": ["restval", "test"]})
    pq.write_table(table, tmp_path / "s.parquet")
    assert [r.split for r in load_database(tmp_path / "s.parquet").records] == ["train", "test"]
    assert load_database(write_tar(tmp_path / "u" / "0.tar", sample("a"))).records[0].split is None


def test_shards_keep_their_tags(tmp_path):
    members = sample("a", tags=["red", "square"]) + sample("b", tags="blue, round") + sample("c")
    records = load_database(write_tar(tmp_path / "t" / "0.tar", members)).records
    assert [r.tags for r in records] == [("red", "square"), ("blue", "round"), ()]
    table = pa.table({"jpg": [png()] * 2, "caption": ["x", "y"], "tags": [["red", " square "], []]})
    pq.write_table(table, tmp_path / "s.parquet")
    assert [r.tags for r in load_database(tmp_path / "s.parquet").records] == [("red", "square"), ()]


def test_hugging_face_struct_images_and_path_tables(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png("blue"))
    images = pa.array([{"bytes": png(), "path": "ignored.png"}, {"bytes": png("green"), "path": None}])
    pq.write_table(pa.table({"image": images, "text": ["red", "green"]}), tmp_path / "hf.parquet")
    assert [r.member.column for r in load_database(tmp_path / "hf.parquet").records] == ["image.bytes"] * 2
    pq.write_table(pa.table({"file_name": ["img/a.png", "img/a.png"], "caption": ["one", "two"]}), tmp_path / "paths.parquet")
    [record] = load_database(tmp_path / "paths.parquet").records
    assert (record.key, record.captions, record.member) == ("img/a.png", ("one", "two"), None)  # rows of one file merge
    assert len(decoded(load_database(tmp_path / "hf.parquet"), False)) == 2


# ---- bad input --------------------------------------------------------------------------------

BAD_MEMBERS = {
    "not an image": ("not an image", "b.png", sample("b", image=b"not pixels")),
    "truncated": ("truncated or corrupt image", "b.png", sample("b", image=cut_png())),
    "bomb": ("image too large", "b.png", sample("b", image=png_bomb(30_000, 30_000))),
    "no image": ("missing image", "b.txt", [("b.txt", b"a caption")]),
    "empty caption": ("empty caption", "b.png", sample("b", caption="  ")),
    "bad json": ("bad metadata", "b.png", sample("b")[:2] + [("b.json", b"{")]),
    "json not an object": ("bad metadata", "b.png", sample("b")[:2] + [("b.json", b"[1]")]),
    "caption not utf-8": ("bad metadata", "b.png", [("b.png", png()), ("b.txt", b"\xff\xfe")]),
    "no caption": ("bad metadata", "b.png", [("b.png", png()), ("b.json", b"{}")]),
    "two images": ("bad metadata", "b.png", sample("b") + [("b.jpg", png())]),
    "unknown split": ("unknown split", "b.png", sample("b", split="holdout")),
    "link member": ("bad metadata", "b.png", [("b.png", b"", tarfile.SYMTYPE), ("b.txt", b"x")]),
    "duplicate key": ("duplicate key", "a.png", sample("a")),  # not next to the first "a": another sample
}
FOUND_WHEN_DECODED = {"not an image", "truncated or corrupt image", "image too large"}


@pytest.mark.parametrize("case", BAD_MEMBERS)
def test_bad_member_raises_naming_shard_and_member_or_is_counted(tmp_path, case):
    problem, member, bad = BAD_MEMBERS[case]
    shard = write_tar(tmp_path / "wds" / "00000.tar", sample("a") + sample("x") + bad + sample("c"))
    with pytest.raises(DataError) as info:
        decoded(load_database(tmp_path / "wds", max_pixels=10_000), skip_bad=False)
    assert str(info.value).startswith(f"{shard}: {member}: {problem}") and info.value.problem == problem

    db = load_database(tmp_path / "wds", max_pixels=10_000, skip_bad=True)
    assert decoded(db, skip_bad=True) == ["00000.tar/a", "00000.tar/x", "00000.tar/c"]
    assert db.report.counts == {problem: 1} and db.report.items[0].where == f"{shard}: {member}"


def _cut_last_member(tar: Path) -> None:
    data = tar.read_bytes()
    tar.write_bytes(data[: data.rindex(b"IEND") - 20])


def _damage_a_header(tar: Path) -> None:
    data = bytearray(tar.read_bytes())
    second = data.index(b"c.png")  # the header of the third sample
    data[second : second + 512] = b"\x07" * 512
    tar.write_bytes(bytes(data))


BAD_SHARDS = {
    "cut short": ("truncated or corrupt image", "00000.tar: c.png", _cut_last_member, ["00000.tar/a", "00000.tar/b"]),
    "damaged header": ("unreadable file", "00000.tar", _damage_a_header, ["00000.tar/a", "00000.tar/b"]),
    "not a tar": ("unreadable file", "00000.tar", lambda t: t.write_bytes(b"just text, no archive" * 40), []),
}


@pytest.mark.parametrize("case", BAD_SHARDS)
def test_a_damaged_shard_keeps_the_members_before_the_damage(tmp_path, case):
    problem, where, damage, kept = BAD_SHARDS[case]
    shard = write_tar(tmp_path / "wds" / "00000.tar", sample("a") + sample("b") + sample("c"))
    write_tar(tmp_path / "wds" / "00001.tar", sample("d"))
    damage(shard)
    with pytest.raises(DataError, match=f"^{tmp_path / 'wds' / where}: {problem}"):
        decoded(load_database(tmp_path / "wds"), skip_bad=False)
    db = load_database(tmp_path / "wds", skip_bad=True)
    assert decoded(db, skip_bad=True) == kept + ["00001.tar/d"] and db.report.counts == {problem: 1}


def test_shards_missing_from_a_pattern_outside_the_root_or_compressed(tmp_path):
    outside = write_tar(tmp_path / "outside" / "secret.tar", sample("s"))
    write_tar(tmp_path / "wds" / "00000.tar", sample("a"))
    os.symlink(outside, tmp_path / "wds" / "00001.tar")
    with watching() as seen:
        with pytest.raises(DataError, match=r"wds/00001\.tar: outside the database"):
            load_database(tmp_path / "wds")
        db = load_database(str(tmp_path / "wds" / "{00000..00002}.tar"), skip_bad=True)
    assert [r.key for r in db.records] == ["00000.tar/a"] and seen.opened_under(tmp_path / "outside") == []
    assert db.report.counts == {"outside the database": 1, "unreadable file": 1}
    assert str(db.report.items[1]) == f"{tmp_path / 'wds' / '00002.tar'}: unreadable file: no such shard"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "0.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match="compressed shards cannot be read member by member"):
        load_database(tmp_path / "c" / "0.tar.gz")


def _table(tmp_path: Path, rows: list[dict]) -> Path:
    columns = {name: [row.get(name) for row in rows] for name in ("key", "jpg", "caption", "split", "status")}
    schema = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("caption", pa.string()), ("split", pa.string()), ("status", pa.string())])
    (tmp_path / "pq").mkdir(exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), tmp_path / "pq" / "00000.parquet", row_group_size=2)
    return tmp_path / "pq" / "00000.parquet"


def _row(name: str, **changes) -> dict:
    return {"key": name, "jpg": png(), "caption": f"image {name}", "status": "success"} | changes


BAD_ROWS = {
    "no image": ("missing image", _row("b", jpg=None)),
    "not an image": ("not an image", _row("b", jpg=b"not pixels")),
    "empty caption": ("empty caption", _row("b", caption=" ")),
    "no caption": ("bad metadata", _row("b", caption=None)),
    "no key": ("bad metadata", _row("b", key=None)),
    "duplicate key": ("duplicate key", _row("a")),
    "unknown split": ("unknown split", _row("b", split="holdout")),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_parquet_row_raises_naming_file_and_row_or_is_counted(tmp_path, case):
    problem, bad = BAD_ROWS[case]
    failed = _row("f", jpg=None, status="failed_to_download")  # img2dataset's record of a failed download: not an image
    path = _table(tmp_path, [_row("a"), failed, bad, _row("c")])
    with pytest.raises(DataError) as info:
        decoded(load_database(tmp_path / "pq"), skip_bad=False)
    assert str(info.value).startswith(f"{path}: row 2: {problem}") and info.value.problem == problem
    db = load_database(tmp_path / "pq", skip_bad=True)
    assert decoded(db, skip_bad=True) == ["00000.parquet/a", "00000.parquet/c"]
    assert db.report.counts == {problem: 1} and db.report.items[0].where == f"{path}: row 2"


def test_whole_parquet_file_problems(tmp_path):
    pq.write_table(pa.table({"jpg": [png()], "tags": ["red, square"]}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"a\.parquet: bad metadata: no caption column .*--caption-template"):
        load_database(tmp_path / "a.parquet", skip_bad=True)
    [record] = load_database(tmp_path / "a.parquet", caption_template="a photo of {}").records
    assert record.captions == ("a photo of red", "a photo of square", "a photo of red, square")
    pq.write_table(pa.table({"url": ["http://x"], "caption": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet: bad metadata: no image column"):
        load_database(tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match=r"c\.parquet: unreadable file: not a readable parquet file"):
        load_database(tmp_path / "c.parquet")


def test_parquet_paths_are_confined_like_a_csv_s(tmp_path):
    (tmp_path / "db" / "img").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "db" / "img" / "a.png").write_bytes(png())
    (tmp_path / "outside" / "secret.png").write_bytes(png("green"))
    paths = ["img/a.png", "../outside/secret.png", str(tmp_path / "outside" / "secret.png"), "img/missing.png"]
    pq.write_table(pa.table({"file_name": paths, "caption": ["in", "climb", "absolute", "gone"]}), tmp_path / "db" / "list.parquet")
    with watching() as seen:
        with pytest.raises(DataError, match=r"list\.parquet: row 1: outside the database"):
            load_database(tmp_path / "db" / "list.parquet")
        db = load_database(tmp_path / "db" / "list.parquet", skip_bad=True)
        assert decoded(db, skip_bad=True) == ["img/a.png"]
    assert db.report.counts == {"outside the database": 2, "missing image": 1}
    assert seen.opened_under(tmp_path / "outside") == []


# ---- train, eval, index and serve -------------------------------------------------------------


def test_train_eval_and_index_read_shards(world, tmp_path, capsys):
    _, wds, pq_dir = world
    out = tmp_path / "p.safetensors"
    args = ["--no-progress", "--model", "dbprompt-tiny", "--pretrained", "random"]
    assert main(["train", str(pq_dir), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--text-len", "2"] + args) == 0
    capsys.readouterr()
    assert main(["eval", str(pq_dir), "--prompts", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == read_prompt_file(out).extra["splits"]["images"]["test"] > 0
    assert main(["index", f"{wds}/{{00000..00002}}.tar", "--prompts", str(out), "--out", str(tmp_path / "idx"), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 30


def _member_bytes(shards: Path, key: str) -> bytes:
    [record] = [r for r in load_database(shards).records if r.key == key]
    return record.member.read(record.path)


@pytest.mark.parametrize("write", [write_webdataset, write_parquet])
def test_an_index_of_shards_updates_by_shard_and_serves_members_checked(tmp_path, tiny_backbone, write):
    shards = write(write_database(tmp_path / "db", 20, seed=4, image_size=32), tmp_path / "shards", 10)
    other = write(write_database(tmp_path / "db2", 20, seed=5, image_size=32), tmp_path / "other", 10)
    prompts = make_prompt_file(tmp_path / "p.safetensors", tiny_backbone, seed=2)
    info = build_index(shards, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    assert info.count == 20 and info.root == str(shards.resolve())
    suffix = ".tar" if write is write_webdataset else ".parquet"
    first, second = f"00000{suffix}/000000003", f"00001{suffix}/000010003"

    with open_index(tmp_path / "idx", backbone=tiny_backbone) as searcher:
        rows = {row.key: row.id for row in searcher.index.all_rows()}
    with TestClient(create_app([tmp_path / "idx"], runtime=Runtime(), backbone=tiny_backbone)) as client:
        served = client.get(f"/api/databases/idx/images/{rows[first]}")
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        assert served.content == _member_bytes(shards, first)
        assert client.get(f"/api/databases/idx/thumbnails/{rows[first]}").status_code == 200
        shutil.copyfile(other / f"00001{suffix}", shards / f"00001{suffix}")  # same keys, other images
        refused = client.get(f"/api/databases/idx/images/{rows[second]}")
        assert refused.status_code == 404 and "changed since indexing" in refused.json()["detail"]
        assert client.get(f"/api/databases/idx/images/{rows[first]}").status_code == 200

    info = build_index(shards, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    assert (info.last_build["embedded"], info.last_build["reused"]) == (10, 10)  # only the rewritten shard
    with TestClient(create_app([tmp_path / "idx"], runtime=Runtime(), backbone=tiny_backbone)) as client:
        assert client.get(f"/api/databases/idx/images/{rows[second]}").content == _member_bytes(shards, second)
