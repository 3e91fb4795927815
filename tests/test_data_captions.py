"""Captions for databases that have none (--caption-column, --caption-template, tags), and the readers'
confinement to the database's root and pixel limit."""

from __future__ import annotations

import dataclasses

import pytest

from dbprompt.data import DataError, load_database, open_image
from dbprompt.data.database import require_captions
from databases import by_key, karpathy_file, make_image, write_jsonl


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
