"""Generated hostile input (hypothesis): metadata lines, image bytes, prompt files, recorded backbones.

Every case must end in a clear error naming the file, a counted skip, or a good result: never any
other exception (a traceback for the user) and never a read outside the database's root. Over
1,600 cases (tar shards and parquet files among them), derandomized so CI sees the same ones every run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from pathlib import Path

import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from audit import watching
from hostile import png_bomb
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save

from dbprompt.backbones import recorded
from dbprompt.backbones.recorded import RecordedBackboneError, load_recorded_backbone
from dbprompt.compat import BackboneId, IncompatibleError
from dbprompt.data import DataError, load_database
from dbprompt.data.errors import IMAGE_TOO_LARGE, NOT_AN_IMAGE, TRUNCATED_IMAGE
from dbprompt.data.images import decode_image, real_path
from dbprompt.model import PromptedCLIP
from dbprompt.pipeline import decode_batches
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime
from dbprompt.storage import PromptFileError, read_prompt_file

FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.slow,  # 1,600 generated cases: ~20 s on one core
]

SECRETS = ["/etc/passwd", "~/.ssh/id_rsa", "../outside/secret.png", "file:///etc/passwd", "http://evil.example/w.pt"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A database folder with every kind of image file, and a secret outside it."""
    base = tmp_path_factory.mktemp("fuzz")
    root, outside = base / "db", base / "outside"
    (root / "images" / "sub").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (8, 8), "red").save(root / "images" / "0.png")
    Image.new("RGB", (8, 8), "blue").save(root / "images" / "1.jpg", "JPEG")
    (root / "images" / "bad.png").write_text("not pixels")
    (root / "images" / "trunc.jpg").write_bytes((root / "images" / "1.jpg").read_bytes()[:60])
    (root / "images" / "empty.png").touch()
    (root / "images" / "bomb.png").write_bytes(png_bomb(30_000, 30_000))
    (root / "images" / "big.png").write_bytes(png_bomb(12_000, 12_000))
    Image.new("RGB", (8, 8), "green").save(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "images" / "link.png")
    os.symlink(root / "images" / "0.png", root / "images" / "inlink.png")
    os.symlink(outside, root / "images" / "dirlink")
    return root, outside


NAMES = ["images/0.png", "images/1.jpg", "images/bad.png", "images/trunc.jpg", "images/empty.png", "images/bomb.png",
         "images/big.png", "images/link.png", "images/inlink.png", "images/dirlink/secret.png", "images/sub",
         "images/missing.png", "../outside/secret.png", "images/../../outside/secret.png", "", " ", "a\u0000b",
         "\ud800.png", "images/" + "x" * 300]
deep = st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
file_names = st.sampled_from(NAMES) | st.text(max_size=20) | json_values
captions = st.sampled_from(["a red square", "", "  ", ["one", " "], []]) | st.text(max_size=20) | json_values
splits = st.sampled_from([None, "train", "val", "validation", "test", "restval", "holdout", "", 5, ["train"]])
rows = st.fixed_dictionaries(
    {"file_name": file_names}, optional={"text": captions, "split": splits, "tags": captions, "extra": json_values}
)
lines = st.lists(
    rows.map(lambda r: json.dumps(r).encode("utf-8", "surrogatepass")) | st.binary(max_size=30) | deep.map(str.encode),
    min_size=1, max_size=6,
)


def _check_database(root: Path, outside: Path, source: Path | None = None, **read) -> None:
    """Read and decode in-process: a DataError naming a file of the database, or confined records."""
    with watching() as seen:
        try:
            db = load_database(source or (root if "sep" not in read else root / "db.csv"), **read)
            for _ in decode_batches(db.records, lambda im: torch.zeros(1), Runtime(), skip_bad=read["skip_bad"], report=db.report):
                pass
        except DataError as exc:
            assert str(root) in str(exc)
        else:
            for record in db.records:
                assert not Path(record.key).is_absolute() and ".." not in Path(record.key).parts
                assert real_path(record.path).is_relative_to(root.resolve())
            assert all(str(root) in str(item) for item in db.report.items)
    assert seen.opened_under(outside) == []


@settings(FUZZ, max_examples=450)
@given(body=lines, template=st.sampled_from([None, "a photo of {}"]), skip_bad=st.booleans())
def test_fuzzed_metadata_lines(world, body, template, skip_bad):
    root, outside = world
    (root / "metadata.jsonl").write_bytes(b"\n".join(body) + b"\n")
    _check_database(root, outside, caption_template=template, skip_bad=skip_bad)


csv_cells = st.sampled_from(NAMES[:14] + ["a caption", "", '"', "\t", "train"]) | st.text(max_size=15)


@settings(FUZZ, max_examples=150)
@given(table=st.lists(st.lists(csv_cells, min_size=0, max_size=4), min_size=1, max_size=5), skip_bad=st.booleans())
def test_fuzzed_csv_rows(world, table, skip_bad):
    root, outside = world
    text = io.StringIO()
    csv.writer(text).writerows([["filepath", "title"], *table])
    (root / "db.csv").write_text(text.getvalue(), encoding="utf-8", errors="surrogateescape")
    _check_database(root, outside, sep=",", skip_bad=skip_bad)


member_names = st.sampled_from(
    ["0.png", "0.txt", "0.json", "1.jpg", "1.txt", "../up.png", "/abs/2.png", "d/3.png", "d/3.txt", ".hidden.png",
     "noext", "4.PNG", "4.txt", "5.seg.png", "0.png"]
) | st.text(st.characters(blacklist_characters="\0"), max_size=12)
member_kinds = st.sampled_from([tarfile.REGTYPE] * 6 + [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE])


def _tar(members: list[tuple[str, bytes, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
            info.linkname = "../../outside/secret.png"
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def _damage(data: bytes, change: str, at: int, junk: bytes) -> bytes:
    """The file cut short, or `junk` written over it, at a fraction `at` of its length."""
    cut = len(data) * at // 100
    return data[:cut] if change == "truncate" else data[:cut] + junk + data[cut + len(junk) :] if change == "overwrite" else data


damages = st.tuples(st.sampled_from(["none", "none", "truncate", "overwrite"]), st.integers(0, 100), st.binary(min_size=1, max_size=64))


@settings(FUZZ, max_examples=150)
@given(data=st.data(), skip_bad=st.booleans(), damage=damages)
def test_fuzzed_tar_shards(world, data, skip_bad, damage):
    root, outside = world
    payloads = image_bytes() | st.binary(max_size=30) | json_values.map(lambda v: json.dumps(v).encode()) | captions.map(lambda c: str(c).encode())
    members = data.draw(st.lists(st.tuples(member_names, payloads, member_kinds), min_size=1, max_size=6))
    try:
        shard = _tar(members)
    except (ValueError, UnicodeError):  # a name tarfile cannot write
        assume(False)
    (root / "shards").mkdir(exist_ok=True)
    (root / "shards" / "00000.tar").write_bytes(_damage(shard, *damage))
    _check_database(root, outside, root / "shards", skip_bad=skip_bad, max_pixels=10_000)


@st.composite
def parquet_table(draw) -> pa.Table:
    """img2dataset's columns (or a table of paths), each value drawn from good, odd and hostile ones."""
    n = draw(st.integers(1, 5))
    column = lambda values: draw(st.lists(values, min_size=n, max_size=n))  # noqa: E731
    utf8 = st.characters(blacklist_categories=("Cs",))  # what an arrow string can hold
    texts = st.none() | st.sampled_from(["a red square", "", " "]) | st.text(utf8, max_size=12)
    table = {
        "caption": pa.array(column(texts), pa.string()) if draw(st.booleans()) else pa.array(column(st.none() | st.lists(texts, max_size=3)), pa.list_(pa.string())),
        "split": pa.array(column(st.none() | st.sampled_from(["train", "val", "validation", "test", "restval", "holdout", ""])), pa.string()),
    }
    if draw(st.booleans()):
        names = st.sampled_from([n for n in NAMES if "\ud800" not in n]) | st.text(utf8, max_size=20)
        table["file_name"] = pa.array(column(st.none() | names), pa.string())
    else:
        table["jpg"] = pa.array(column(st.none() | image_bytes() | st.binary(max_size=30)), pa.binary())
        table["key"] = pa.array(column(st.none() | st.sampled_from(["0", "1", "0", "../x", "a/b"]) | st.text(utf8, max_size=8)), pa.string())
        table["status"] = pa.array(column(st.none() | st.sampled_from(["success", "failed_to_download"])), pa.string())
    return pa.table(table)


@settings(FUZZ, max_examples=150)
@given(table=parquet_table(), skip_bad=st.booleans(), damage=damages)
def test_fuzzed_parquet_rows(world, table, skip_bad, damage):
    root, outside = world
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=2)
    (root / "db.parquet").write_bytes(_damage(buf.getvalue(), *damage))
    _check_database(root, outside, root / "db.parquet", skip_bad=skip_bad, max_pixels=10_000)


@st.composite
def image_bytes(draw) -> bytes:
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]))
    mode = "RGB" if fmt == "JPEG" else draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1"]))
    buf = io.BytesIO()
    Image.new(mode, (draw(st.integers(1, 40)), draw(st.integers(1, 40)))).save(buf, fmt)
    data = bytearray(buf.getvalue())
    change = draw(st.sampled_from(["none", "truncate", "flip", "bomb", "junk", "splice"]))
    if change == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif change == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif change == "bomb":
        data = bytearray(png_bomb(draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1))))
    elif change == "junk":
        data = bytearray(draw(st.binary(max_size=64)))
    elif change == "splice":
        data = data[:16] + draw(st.binary(max_size=32)) + data[16:]
    return bytes(data)


@settings(FUZZ, max_examples=450)
@given(data=image_bytes())
def test_fuzzed_image_bytes(data):
    try:
        image = decode_image(data, "upload", max_pixels=10_000)
    except DataError as exc:
        assert exc.problem in (NOT_AN_IMAGE, TRUNCATED_IMAGE, IMAGE_TOO_LARGE)
        assert str(exc).startswith("upload: ") and " at 0x" not in str(exc)
    else:
        assert image.mode == "RGB" and image.width * image.height <= 10_000


@pytest.fixture(scope="module")
def prompt_file(tiny_backbone, tmp_path_factory) -> tuple[bytes, dict, dict]:
    config = PromptConfig(text_len=2, visual_len=2, vocab=4)
    model = PromptedCLIP.for_captions(tiny_backbone, config, ["a red star", "a blue circle"])
    path = model.save_prompt_file(tmp_path_factory.mktemp("pf") / "p.safetensors")
    with safe_open(str(path), "pt") as f:
        return path.read_bytes(), dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


config_json = st.fixed_dictionaries(
    {}, optional={k: json_values | st.integers(-3, 10**12) for k in ("text_len", "visual_len", "vocab", "text_depth", "text_init", "gate", "dropout", "couple")}
).map(json.dumps)
meta_values = st.sampled_from(SECRETS + ["hf-hub:a/b", "hf-hub:../../x", "local-dir:/etc", "dbprompt-tiny", "random", "",
                                         "dbprompt-proxy", "ViT-B-32", "laion2b_s34b_b79k", "dbprompt-prompts/2",
                                         "dbprompt-prompts/3", "dbprompt", "inserted"])
meta_values = meta_values | st.text(max_size=20) | config_json | deep | json_values.map(json.dumps)
tensor_values = st.sampled_from(["float64", "float16", "int32", "int64", "bool", "nan", "inf", "shape", "drop"])


@st.composite
def prompt_file_bytes(draw, base) -> bytes:
    data, meta, tensors = base
    meta, tensors = dict(meta), dict(tensors)
    kind = draw(st.sampled_from(["metadata", "tensor", "bytes", "both"]))
    if kind in ("metadata", "both"):
        for key in draw(st.lists(st.sampled_from(sorted(meta) + ["evil"]), min_size=1, max_size=3)):
            meta[key] = draw(meta_values)
    if kind in ("tensor", "both"):
        name = draw(st.sampled_from(sorted(tensors) + ["evil"]))
        change = draw(tensor_values)
        old = tensors.get(name, torch.zeros(2))
        if change == "drop":
            tensors.pop(name, None)
        elif change == "shape":
            tensors[name] = torch.zeros(draw(st.lists(st.integers(0, 5), max_size=3)), dtype=old.dtype)
        elif change in ("nan", "inf"):
            tensors[name] = old.float().fill_(float(change))
        else:
            tensors[name] = old.to(getattr(torch, change))
    if kind == "bytes":
        raw = bytearray(data)
        if draw(st.booleans()):
            raw[:8] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
        for _ in range(draw(st.integers(0, 6))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw[: draw(st.integers(0, len(raw)))])
    return save(tensors, metadata=meta)


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzzed_prompt_files(prompt_file, tiny_backbone, tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "fuzzed.safetensors"
    path.write_bytes(data.draw(prompt_file_bytes(prompt_file)))
    with watching() as seen:
        try:
            read_prompt_file(path)
            PromptedCLIP.from_prompt_file(path, tiny_backbone)
        except (PromptFileError, IncompatibleError) as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
    assert seen.network == [] and not [p for p in seen.opened if "passwd" in p or ".ssh" in p]


names = st.sampled_from(["dbprompt-tiny", "ViT-B-32", "hf-hub:org/model", "hf-hub:org/../x", "hf:/abs/dir", "local-dir:/etc",
                         "/etc/passwd", "../model", "hf-hub:", "RN50"]) | st.text(max_size=20)
weights = st.none() | st.sampled_from(SECRETS + ["random", "openai", "laion2b_s34b_b79k", "dbprompt-tiny", "C:\\w.pt"]) | st.text(max_size=20)


@settings(FUZZ, max_examples=200)
@given(name=names, pretrained=weights)
def test_fuzzed_recorded_backbones_never_name_a_path(tiny_backbone, name, pretrained):
    loaded = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recorded, "load_backbone", lambda *args, **kwargs: loaded.append(args) or tiny_backbone)
        try:
            load_recorded_backbone(BackboneId(name, pretrained, "0" * 16), source="file")
        except RecordedBackboneError as exc:
            assert str(exc).startswith("file: records backbone") and "--model and --pretrained" in str(exc)
    if loaded:  # what reached the loader names no path: a known model, a hub id, a known tag
        hub = name.split(":", 1)[1] if name.startswith(("hf-hub:", "hf:")) else None
        assert name in open_clip.list_models() or (hub and ".." not in hub and not hub.startswith("/"))
        assert pretrained in (None, "random", name) or pretrained in open_clip.list_pretrained_tags_by_model(name)
