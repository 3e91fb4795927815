"""Database readers, bad-input handling and split assignment, on fixtures built in tmp_path."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbprompt.data.database import require_captions
from dbprompt.data import (
    DataError,
    Record,
    assign_splits,
    detect_format,
    load_database,
    open_image,
    read_csv,
    read_imagefolder,
    read_karpathy,
    records_for,
)


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


# ---- readers --------------------------------------------------------------------------------


def test_imagefolder_jsonl_merges_captions_keeps_subdirs_and_lists(tmp_path):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "sub" / "b.jpg", fmt="JPEG")
    write_jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "a.png", "text": "a red square"},
        {"file_name": "sub/b.jpg", "text": ["first b", "second b"], "extra": 1},
        {"file_name": "a.png", "text": "another a"},
    ])
    records = by_key(read_imagefolder(tmp_path))
    assert set(records) == {"a.png", "sub/b.jpg"}
    assert records["a.png"].captions == ("a red square", "another a")
    assert records["sub/b.jpg"].captions == ("first b", "second b")
    assert records["sub/b.jpg"].path == tmp_path / "sub" / "b.jpg"
    assert records["a.png"].split is None


def test_imagefolder_csv_honours_split_column(tmp_path):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    (tmp_path / "metadata.csv").write_text(
        'file_name,text,split\na.png,"one, with comma",train\nb.png,two,validation\na.png,three,train\n'
    )
    records = by_key(read_imagefolder(tmp_path))
    assert records["a.png"].captions == ("one, with comma", "three")
    assert (records["a.png"].split, records["b.png"].split) == ("train", "val")


def test_imagefolder_split_subfolders(tmp_path):
    make_image(tmp_path / "train" / "x.png")
    make_image(tmp_path / "test" / "x.png")
    make_image(tmp_path / "validation" / "y.png")
    write_jsonl(tmp_path / "train" / "metadata.jsonl", [{"file_name": "x.png", "text": "train x"}])
    write_jsonl(tmp_path / "test" / "metadata.jsonl", [{"file_name": "x.png", "text": "test x"}])
    (tmp_path / "validation" / "metadata.csv").write_text("file_name,text\ny.png,val y\n")
    (tmp_path / "unrelated").mkdir()
    records = by_key(read_imagefolder(tmp_path))
    assert {k: r.split for k, r in records.items()} == {"train/x.png": "train", "test/x.png": "test", "validation/y.png": "val"}


def test_imagefolder_unknown_split_folder(tmp_path):
    make_image(tmp_path / "extra" / "x.png")
    write_jsonl(tmp_path / "extra" / "metadata.jsonl", [{"file_name": "x.png", "text": "x"}])
    with pytest.raises(DataError, match="extra.*unknown split"):
        read_imagefolder(tmp_path)


def karpathy_file(tmp_path: Path, images: list) -> Path:
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_karpathy_filepath_restval_and_sentences(tmp_path):
    make_image(tmp_path / "val2014" / "a.jpg", fmt="JPEG")
    make_image(tmp_path / "b.jpg", fmt="JPEG")
    path = karpathy_file(tmp_path, [
        {"filepath": "val2014", "filename": "a.jpg", "split": "restval",
         "sentences": [{"raw": "one", "tokens": ["one"]}, {"raw": "two"}]},
        {"filename": "b.jpg", "split": "test", "sentences": [{"raw": "three"}]},
    ])
    records = by_key(read_karpathy(path))
    assert records["val2014/a.jpg"].captions == ("one", "two")
    assert records["val2014/a.jpg"].split == "train"
    assert records["b.jpg"].split == "test"


def test_karpathy_whole_file_problems_always_raise(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [\n  {"filename": }\n]}')
    with pytest.raises(DataError, match=r"broken\.json:2: bad metadata: not valid JSON"):
        read_karpathy(tmp_path / "broken.json", skip_bad=True)
    with pytest.raises(DataError, match="unreadable file"):
        read_karpathy(tmp_path / "missing.json")


def test_karpathy_image_root(tmp_path):
    make_image(tmp_path / "images" / "val2014" / "a.jpg", fmt="JPEG")
    (tmp_path / "ann").mkdir()
    entry = {"filepath": "val2014", "filename": "a.jpg", "split": "val", "sentences": [{"raw": "x"}]}
    path = karpathy_file(tmp_path / "ann", [entry])
    [record] = read_karpathy(path, image_root=tmp_path / "images")
    assert record.path == tmp_path / "images" / "val2014" / "a.jpg"
    assert record.key == "val2014/a.jpg"


def test_csv_tsv_columns_absolute_paths_and_root(tmp_path):
    make_image(tmp_path / "a.png")
    elsewhere = make_image(tmp_path / "far" / "b.png")
    (tmp_path / "train.tsv").write_text(f"filepath\ttitle\na.png\tcap a\n{elsewhere}\tcap b\na.png\tcap a2\n")
    records = by_key(read_csv(tmp_path / "train.tsv"))
    assert records["a.png"].captions == ("cap a", "cap a2")
    assert records["far/b.png"].path == elsewhere

    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "db.csv").write_text("caption,img\nhello,a.png\n")
    [record] = read_csv(tmp_path / "meta" / "db.csv", image_root=tmp_path, image_column="img", caption_column="caption")
    assert (record.key, record.captions) == ("a.png", ("hello",))

    (tmp_path / "semi.txt").write_text("filepath;title\na.png;semi\n")
    assert read_csv(tmp_path / "semi.txt", sep=";")[0].captions == ("semi",)


def test_csv_missing_header_column_always_raises(tmp_path):
    (tmp_path / "db.csv").write_text("path,title\na.png,x\n")
    with pytest.raises(DataError, match=r"db\.csv:1: bad metadata.*filepath"):
        read_csv(tmp_path / "db.csv", skip_bad=True)


# ---- auto-detection -------------------------------------------------------------------------


def test_detect_and_load_every_format(tmp_path):
    make_image(tmp_path / "folder" / "a.png")
    write_jsonl(tmp_path / "folder" / "metadata.jsonl", [{"file_name": "a.png", "text": "a"}])
    make_image(tmp_path / "splits" / "train" / "a.png")
    write_jsonl(tmp_path / "splits" / "train" / "metadata.jsonl", [{"file_name": "a.png", "text": "a"}])
    make_image(tmp_path / "b.png")
    karpathy_file(tmp_path, [{"filename": "b.png", "split": "val", "sentences": [{"raw": "b"}]}])
    (tmp_path / "db.tsv").write_text("filepath\ttitle\nb.png\tb\n")
    (tmp_path / "db.csv").write_text("filepath,title\nb.png,b\n")

    cases = {
        tmp_path / "folder": "imagefolder",
        tmp_path / "folder" / "metadata.jsonl": "imagefolder",
        tmp_path / "splits": "imagefolder",
        tmp_path / "dataset_coco.json": "karpathy",
        tmp_path / "db.tsv": "csv",
        tmp_path / "db.csv": "csv",
    }
    for path, fmt in cases.items():
        assert detect_format(path) == fmt, path
        db = load_database(path)
        assert len(db.records) == 1 and db.source == path and db.report.summary() == "no bad input"

    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "other.json").write_text('{"annotations": []}')
    with pytest.raises(DataError, match="cannot tell the format"):
        load_database(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="other.json.*images"):
        load_database(tmp_path / "other.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metadata"):
        load_database(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file"):
        load_database(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="image_root"):
        load_database(tmp_path / "folder", image_root=tmp_path)


# ---- bad input ------------------------------------------------------------------------------


def _missing(d: Path) -> dict:
    return {"file_name": "nope.png", "text": "x"}


def _zero_byte(d: Path) -> dict:
    (d / "empty.png").touch()
    return {"file_name": "empty.png", "text": "x"}


def _truncated(d: Path) -> dict:
    make_truncated(d / "cut.jpg")
    return {"file_name": "cut.jpg", "text": "x"}


def _not_image(d: Path) -> dict:
    (d / "notes.png").write_text("not pixels")
    return {"file_name": "notes.png", "text": "x"}


BAD_LINES = {
    "missing image": ("missing image", _missing),
    "zero-byte": ("zero-byte file", _zero_byte),
    "truncated": ("truncated or corrupt image", _truncated),
    "not an image": ("not an image", _not_image),
    "empty caption": ("empty caption", lambda d: {"file_name": "a.png", "text": ""}),
    "whitespace caption": ("empty caption", lambda d: {"file_name": "a.png", "text": " \t "}),
    "bad json": ("bad metadata", lambda d: '{"file_name": "a.png", "text": '),
    "not an object": ("bad metadata", lambda d: "[1, 2]"),
    "missing column": ("bad metadata", lambda d: {"file_name": "a.png"}),
    "wrong type": ("bad metadata", lambda d: {"file_name": "a.png", "text": 5}),
    "unknown split": ("unknown split", lambda d: {"file_name": "a.png", "text": "x", "split": "holdout"}),
}


# Found when the image is first decoded (by training, evaluation or indexing), not by the reader.
FOUND_WHEN_DECODED = {"truncated or corrupt image", "not an image"}


def _first_decode(db, skip_bad: bool) -> list:
    """Every record through the pipeline that training, evaluation and indexing use."""
    from torchvision.transforms import ToTensor

    from dbprompt.pipeline import decode_batches
    from dbprompt.runtime import Runtime

    kept = []
    for batch in decode_batches(db.records, ToTensor(), Runtime(), batch_size=2, skip_bad=skip_bad, report=db.report):
        kept += [db.records[i] for i in batch.indices]
    return kept


@pytest.mark.parametrize("case", BAD_LINES)
def test_bad_jsonl_line_raises_or_is_counted(tmp_path, case):
    problem, make_bad = BAD_LINES[case]
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    good_a, good_b = {"file_name": "a.png", "text": "good a"}, {"file_name": "b.png", "text": "good b"}
    write_jsonl(tmp_path / "metadata.jsonl", [good_a, "", make_bad(tmp_path), good_b])  # bad item on line 3

    with pytest.raises(DataError) as info:
        _first_decode(load_database(tmp_path), skip_bad=False)
    assert "metadata.jsonl:3: " + problem in str(info.value)
    assert info.value.problem == problem

    db = load_database(tmp_path, skip_bad=True)
    if problem in FOUND_WHEN_DECODED:
        assert len(db.records) == 3 and not db.report.items
        db.records = _first_decode(db, skip_bad=True)
    assert {r.key: r.captions for r in db.records} == {"a.png": ("good a",), "b.png": ("good b",)}
    assert db.report.counts == {problem: 1}
    [item] = db.report.items
    assert (item.file.name, item.line, item.problem) == ("metadata.jsonl", 3, problem)
    assert db.report.summary() == f"skipped 1 bad item(s): 1 {problem}"


def test_empty_caption_in_list_drops_only_that_caption(tmp_path):
    make_image(tmp_path / "a.png")
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": ["kept", "  ", "also kept"]}])
    with pytest.raises(DataError, match=r"metadata\.jsonl:1: empty caption: caption 2 of 3"):
        read_imagefolder(tmp_path)
    db = load_database(tmp_path, skip_bad=True)
    assert db.records[0].captions == ("kept", "also kept")
    assert db.report.counts == {"empty caption": 1}


def test_csv_reports_physical_line_of_the_row(tmp_path):
    make_image(tmp_path / "a.png")
    (tmp_path / "db.csv").write_text(
        'filepath,title\n'
        'a.png,"a caption\nover two lines"\n'  # lines 2-3
        'gone.png,missing image\n'             # line 4
        'a.png,too,many\n'                     # line 5
        '\n'                                   # line 6, blank
        'a.png,   \n'                          # line 7
    )
    # Metadata is checked before any image is decoded, so line 5 fails before line 4.
    with pytest.raises(DataError, match=r"db\.csv:5: bad metadata: 3 field\(s\), header has 2"):
        load_database(tmp_path / "db.csv")
    db = load_database(tmp_path / "db.csv", skip_bad=True)
    assert db.records[0].captions == ("a caption\nover two lines",)
    assert [(i.line, i.problem) for i in db.report.items] == [
        (5, "bad metadata"), (7, "empty caption"), (4, "missing image")
    ]
    assert "gone.png" in str(db.report.items[2])
    assert db.report.summary() == "skipped 3 bad item(s): 1 bad metadata, 1 empty caption, 1 missing image"


def test_csv_invalid_utf8_row(tmp_path):
    make_image(tmp_path / "a.png")
    (tmp_path / "db.csv").write_bytes(b"filepath,title\na.png,ok\na.png,bad \xff byte\n")
    with pytest.raises(DataError, match=r"db\.csv:3: bad metadata: not valid UTF-8"):
        load_database(tmp_path / "db.csv")
    assert load_database(tmp_path / "db.csv", skip_bad=True).records[0].captions == ("ok",)


def test_karpathy_problems_are_located_by_image_index(tmp_path):
    make_image(tmp_path / "a.jpg", fmt="JPEG")
    make_image(tmp_path / "c.jpg", fmt="JPEG")
    path = karpathy_file(tmp_path, [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "a"}]},
        {"filename": "gone.jpg", "split": "train", "sentences": [{"raw": "b"}]},
        {"filename": "c.jpg", "split": "val", "sentences": [{"raw": "c"}, {"raw": ""}]},
        {"filename": "a.jpg", "split": "holdout", "sentences": [{"raw": "d"}]},
        {"filename": "c.jpg", "split": "val", "sentences": []},
    ])
    with pytest.raises(DataError, match=r"dataset_coco\.json: images\[2\]: empty caption"):
        load_database(path)
    db = load_database(path, skip_bad=True)
    assert {r.key: r.captions for r in db.records} == {"a.jpg": ("a",), "c.jpg": ("c",)}
    assert db.report.counts == {"empty caption": 1, "unknown split": 1, "bad metadata": 1, "missing image": 1}
    assert sorted(i.line for i in db.report.items) == [1, 2, 3, 4]


def test_conflicting_split_for_the_same_image(tmp_path):
    make_image(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("file_name,text,split\na.png,one,train\na.png,two,test\n")
    with pytest.raises(DataError, match=r"metadata\.csv:3: conflicting split"):
        read_imagefolder(tmp_path)
    db = load_database(tmp_path, skip_bad=True)
    assert db.records[0].captions == ("one",) and db.report.counts == {"conflicting split": 1}


def test_nothing_usable_always_raises(tmp_path):
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "gone.png", "text": "x"}])
    with pytest.raises(DataError, match="no usable records.*1 missing image"):
        load_database(tmp_path, skip_bad=True)


def test_open_image_gives_rgb_and_names_bad_paths(tmp_path):
    gray = make_image(tmp_path / "gray.png", mode="L")
    image = open_image(gray)
    assert image.mode == "RGB" and image.size == (8, 8)
    assert open_image(make_image(tmp_path / "ok.jpg", fmt="JPEG")).size == (8, 8)
    for keep in (0.5, 0.1):  # pixel data cut, header cut
        with pytest.raises(DataError, match=r"cut\.jpg: truncated"):
            open_image(make_truncated(tmp_path / "cut.jpg", keep))
    with pytest.raises(DataError, match=r"gone\.png: missing image"):
        open_image(tmp_path / "gone.png")


# ---- splits ---------------------------------------------------------------------------------


def fake_records(n: int, start: int = 0) -> list[Record]:
    return [Record(f"img{i:04d}.jpg", Path(f"/db/img{i:04d}.jpg"), (f"caption {i}",)) for i in range(start, n)]


def split_map(records: list[Record]) -> dict[str, str]:
    return {r.key: r.split for r in records}


def test_seeded_split_is_deterministic_order_independent_and_stable():
    records = fake_records(400)
    first = assign_splits(records, seed=3)
    assert [r.key for r in first] == [r.key for r in records]  # order kept
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    assert split_map(assign_splits(shuffled, seed=3)) == split_map(first)
    assert split_map(assign_splits(records, seed=4)) != split_map(first)
    grown = split_map(assign_splits(records + fake_records(500, start=400), seed=3))
    assert all(grown[k] == s for k, s in split_map(first).items())  # growing never moves an image

    parts = {s: records_for(first, s) for s in ("train", "val", "test")}
    keys = [r.key for part in parts.values() for r in part]
    assert sorted(keys) == sorted(r.key for r in records)  # each image in exactly one split
    assert 20 <= len(parts["val"]) <= 60 and 20 <= len(parts["test"]) <= 60


def test_existing_splits_are_kept_and_unsplit_go_to_train():
    records = fake_records(4)
    given = [dataclasses.replace(records[0], split="test")] + records[1:]
    assert [r.split for r in assign_splits(given)] == ["test", "train", "train", "train"]
    assert [r.split for r in assign_splits(given[:1])] == ["test"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_database_always_has_a_train_image(n):
    for seed in range(30):
        for test_fraction in (0.1, 0.5, 0.9):
            records = assign_splits(fake_records(n), val_fraction=0.05, test_fraction=test_fraction, seed=seed)
            assert "train" in {r.split for r in records}


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.1, 1.0), (0.5, 0.5), (1.0, 0.0)])
def test_fractions_are_validated(val, test):
    with pytest.raises(ValueError, match="fraction"):
        assign_splits(fake_records(3), val_fraction=val, test_fraction=test)


def test_records_for_refuses_unknown_and_unsplit():
    with pytest.raises(ValueError, match="unknown split"):
        records_for(assign_splits(fake_records(3)), "dev")
    with pytest.raises(ValueError, match="assign_splits"):
        records_for(fake_records(3), "train")


# ---- captions for databases without them (--caption-column, --caption-template) ----------------


def test_imagefolder_honours_the_caption_column(tmp_path):
    make_image(tmp_path / "a.png")
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "not this", "caption": "this one"}])
    assert load_database(tmp_path, caption_column="caption").records[0].captions == ("this one",)
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.csv").write_text("file_name,alt\na.png,from csv\n")
    assert load_database(tmp_path, caption_column="alt").records[0].captions == ("from csv",)
    with pytest.raises(DataError, match=r"metadata\.csv:1: bad metadata: header lacks column\(s\) \['text'\]"):
        load_database(tmp_path)


def test_caption_template_fills_from_tags_then_file_names(tmp_path):
    for name in ("dog_003.png", "cat.png", "007.png", "b.png"):
        make_image(tmp_path / name)
    write_jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "dog_003.png", "tags": ["dog", " beach ", "dog", ""]},
        {"file_name": "cat.png", "tags": "cat, sofa"},
        {"file_name": "b.png", "text": "a real caption", "tags": ["ignored"]},
        {"file_name": "007.png"},
    ])
    with pytest.raises(DataError, match=r"metadata\.jsonl:1: bad metadata: missing column 'text' \(for images without captions, see --caption-template\)"):
        load_database(tmp_path)
    with pytest.raises(DataError, match=r"metadata\.jsonl:4: empty caption: no tags, class folder or words"):
        load_database(tmp_path, caption_template="a photo of {}")
    db = load_database(tmp_path, caption_template="a photo of {}", skip_bad=True)
    assert {r.key: r.captions for r in db.records} == {
        "dog_003.png": ("a photo of dog", "a photo of beach", "a photo of dog, beach"),  # a caption a tag, one for all
        "cat.png": ("a photo of cat", "a photo of sofa", "a photo of cat, sofa"),
        "b.png": ("a real caption",),
    }
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "007.png", "labels": ["bond"]}\n{"file_name": "cat.png", "labels": [1]}\n')
    db = load_database(tmp_path, caption_template="{}", tags_column="labels", skip_bad=True)
    assert db.records[0].captions == ("bond",) and db.report.counts == {"bad metadata": 1}
    assert "tags must be a list of strings" in str(db.report.items[0])


def test_records_keep_their_tags_whether_or_not_they_made_the_captions(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        make_image(tmp_path / name)
    write_jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "a.png", "text": "a dog", "tags": ["dog", " beach ", "dog", ""]},
        {"file_name": "b.png", "text": "a cat", "tags": "cat, sofa"},
        {"file_name": "c.png", "text": "a thing", "tags": [{"name": "x", "score": 0.9}]},  # some other tool's column
        {"file_name": "d.png", "text": "nothing tagged"},
        {"file_name": "a.png", "text": "a dog again", "tags": ["sea", "dog"]},  # lines of one image merge
    ])
    db = load_database(tmp_path)
    assert {r.key: (r.captions, r.tags) for r in db.records} == {
        "a.png": (("a dog", "a dog again"), ("dog", "beach", "sea")),
        "b.png": (("a cat",), ("cat", "sofa")),
        "c.png": (("a thing",), ()),
        "d.png": (("nothing tagged",), ()),
    }
    assert not db.report.items
    templated = load_database(tmp_path, caption_template="a photo of {}", caption_column="none", skip_bad=True)
    assert "tags must be a list of strings" in str(templated.report.items[0])  # made captions: they must be tags
    templated = by_key(templated.records)
    assert templated["b.png"].captions == ("a photo of cat", "a photo of sofa", "a photo of cat, sofa")
    assert templated["b.png"].tags == ("cat", "sofa")
    (tmp_path / "db.csv").write_text('filepath,title,labels\na.png,a dog,"dog, beach"\nb.png,a cat,\n')
    assert [r.tags for r in load_database(tmp_path / "db.csv", tags_column="labels").records] == [("dog", "beach"), ()]
    marked = dataclasses.replace(db.records[0], captions=("new",))
    assert marked.tags == ("dog", "beach", "sea")  # what copies a record (marks, splits) keeps its tags


def test_caption_template_from_class_folders_of_a_folder_without_metadata(tmp_path):
    make_image(tmp_path / "train" / "golden_retriever" / "1.jpg", fmt="JPEG")
    make_image(tmp_path / "train" / "tabby-cat" / "2.png")
    make_image(tmp_path / "test" / "tabby-cat" / "3.png")
    make_image(tmp_path / "loose_photo_01.png")
    make_image(tmp_path / ".hidden" / "x.png")
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    # Without a template, the images are read uncaptioned: to index, search and mark, not to train or evaluate.
    bare = load_database(tmp_path)
    assert sorted(r.key for r in bare.records) == ["loose_photo_01.png", "test/tabby-cat/3.png", "train/golden_retriever/1.jpg", "train/tabby-cat/2.png"]
    assert all(r.captions == () for r in bare.records)
    with pytest.raises(DataError, match="4 of 4 images have no caption, which training needs.*--caption-template.*--feedback"):
        require_captions(bare, "training")
    db = load_database(tmp_path, caption_template="a photo of a {}")
    assert {r.key: (r.captions, r.split) for r in db.records} == {
        "loose_photo_01.png": (("a photo of a loose photo",), None),
        "test/tabby-cat/3.png": (("a photo of a tabby cat",), "test"),
        "train/golden_retriever/1.jpg": (("a photo of a golden retriever",), "train"),
        "train/tabby-cat/2.png": (("a photo of a tabby cat",), "train"),
    }


def test_caption_template_for_csv_and_its_validation(tmp_path):
    make_image(tmp_path / "x" / "red_car.png")
    (tmp_path / "db.csv").write_text("filepath,tags\nx/red_car.png,\n")
    assert load_database(tmp_path / "db.csv", caption_template="a {} photo").records[0].captions == ("a red car photo",)
    for bad in ("no slot", "{} and {}", "{0}"):
        with pytest.raises(ValueError, match="--caption-template must contain {} exactly once"):
            load_database(tmp_path / "db.csv", caption_template=bad)


# ---- confinement and the pixel limit -----------------------------------------------------------


def test_paths_resolving_outside_the_root_are_bad_items_and_keys_stay_relative(tmp_path):
    root = tmp_path / "db"
    make_image(root / "real" / "a.png")
    make_image(tmp_path / "elsewhere" / "b.png")
    (root / "inside-link.png").symlink_to(root / "real" / "a.png")
    (root / "dir-link").symlink_to(tmp_path / "elsewhere")
    write_jsonl(root / "metadata.jsonl", [
        {"file_name": "inside-link.png", "text": "a symlink within the database is fine"},
        {"file_name": str(root / "real" / "a.png"), "text": "an absolute path inside is fine"},
        {"file_name": "dir-link/b.png", "text": "a symlinked folder leading out is not"},
        {"file_name": "real/../../elsewhere/b.png", "text": "nor climbing out"},
        {"file_name": "a\u0000.png", "text": "nor a NUL byte"},
    ])
    db = load_database(root, skip_bad=True)
    assert {r.key: r.captions for r in db.records} == {
        "inside-link.png": ("a symlink within the database is fine",),
        "real/a.png": ("an absolute path inside is fine",),
    }
    assert [(i.line, i.problem) for i in db.report.items] == [(3, "outside the database"), (4, "outside the database"), (5, "bad metadata")]
    assert "resolves to" in str(db.report.items[0]) and str(tmp_path / "elsewhere" / "b.png") in str(db.report.items[0])
    assert db.root == root.resolve()


def test_karpathy_images_are_confined_to_the_image_root(tmp_path):
    make_image(tmp_path / "images" / "a.jpg", fmt="JPEG")
    make_image(tmp_path / "private" / "b.jpg", fmt="JPEG")
    path = karpathy_file(tmp_path, [
        {"filename": "a.jpg", "filepath": "images", "sentences": [{"raw": "a"}]},
        {"filename": "b.jpg", "filepath": str(tmp_path / "private"), "sentences": [{"raw": "b"}]},
        {"filename": "a.jpg", "sentences": [{"raw": "a again"}]},
    ])
    default = load_database(path, skip_bad=True)  # the root is the file's folder
    assert [r.key for r in default.records] == ["images/a.jpg", "private/b.jpg"]
    narrow = load_database(path, image_root=tmp_path / "images", skip_bad=True)
    assert [r.key for r in narrow.records] == ["a.jpg"]
    assert [(i.line, i.problem) for i in narrow.report.items] == [(1, "outside the database"), (0, "missing image")]


def test_the_pixel_limit_turns_large_images_into_bad_items(tmp_path):
    from hostile import png_bomb

    from dbprompt.data.images import ImageLimits

    (tmp_path / "bomb.png").write_bytes(png_bomb(30_000, 30_000))
    with pytest.raises(DataError, match=r"bomb\.png: image too large: over Pillow's own limit"):
        open_image(tmp_path / "bomb.png")
    big = make_image(tmp_path / "big.png")  # 8 x 8
    assert open_image(big, ImageLimits(max_pixels=64)).size == (8, 8)
    with pytest.raises(DataError, match=r"big\.png: image too large: 8 x 8 = 64 pixels, over the limit of 63 \(--max-pixels\)"):
        open_image(big, ImageLimits(max_pixels=63))
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLimits(max_pixels=0)


def test_undecodable_bytes_are_named_in_plain_words():
    from dbprompt.data.images import decode_image

    with pytest.raises(DataError) as info:
        decode_image(b"GIF89a garbage", "upload")
    assert "0x" not in str(info.value) and str(info.value).startswith("upload: ")
