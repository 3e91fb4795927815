"""Database readers, bad-input handling and split assignment, on fixtures built in tmp_path."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

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
from databases import by_key, karpathy_file, make_image, make_truncated, write_jsonl


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
