"""Training from marks: a folder with no captions and no template, a zero-shot index, marks through the
HTTP API, `train --feedback`, and a new index the server picks up."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from tinydata import SHAPES

from dbprompt.cli import main
from dbprompt.compat import file_sha256
from dbprompt.data import load_database
from dbprompt.marks import Mark, apply_marks
from dbprompt.runtime import Runtime
from dbprompt.server import create_app
from dbprompt.storage import read_prompt_file

TINY = ["--model", "dbprompt-tiny", "--pretrained", "random"]


@pytest.fixture()
def bare_folder(tiny_db, tmp_path):
    """The tiny database's images in class folders, without metadata: nothing to caption them."""
    rows = [json.loads(line) for line in (tiny_db / "metadata.jsonl").read_text().splitlines()]
    root = tmp_path / "photos"
    for row in rows:
        shape = next(s for s in SHAPES if s in row["text"][0])
        target = root / shape / row["file_name"].replace("/", "_")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((tiny_db / row["file_name"]).read_bytes())
    return root


def test_apply_marks_captions_marked_images_and_keeps_negatives_apart(bare_folder):
    records = load_database(bare_folder).records
    a, b, c = records[0].key, records[1].key, records[2].key
    marks = [Mark("a circle", a, "h", True, 0, "p"), Mark("A circle", b, "h", True, 0, "p"), Mark("a circle", c, "h", False, 0, "p"),
             Mark("a square", "gone.png", "h", True, 0, "p")]
    marked = apply_marks(records, marks)
    assert [(r.key, r.captions) for r in marked.records] == [(a, ("a circle",)), (b, ("A circle",))]
    assert [r.key for r in marked.negatives["a circle"]] == [c]
    assert (marked.relevant, marked.irrelevant, marked.queries, marked.unknown) == (2, 1, 2, 1)


def test_marks_alone_train_a_prompt_file_the_server_then_serves(bare_folder, tmp_path, capsys):
    index = tmp_path / "photos.index"
    assert main(["index", str(bare_folder), *TINY, "--out", str(index), "--no-progress"]) == 0
    # No captions and no marks yet: nothing to train on, said in one line.
    assert main(["train", str(bare_folder), *TINY, "--out", str(tmp_path / "p.safetensors"), "--no-progress"]) == 3
    assert "40 of 40 images have no caption" in capsys.readouterr().err
    client = TestClient(create_app([index], runtime=Runtime(), feedback=True))
    url = "/api/databases/photos.index/feedback"
    for shape in ("circle", "square"):
        results = client.get("/api/databases/photos.index/search", params={"q": f"a {shape}", "k": 20}).json()["results"]
        for hit in results:
            relevant = hit["key"].startswith(f"{shape}/")
            assert client.post(url, json={"query": f"a {shape}", "image_id": hit["id"], "relevant": relevant}).status_code == 200
    count = client.get(url).json()["count"]
    assert count == 40
    out = tmp_path / "p.safetensors"
    args = ["train", str(bare_folder), *TINY, "--out", str(out), "--feedback", str(index), "--epochs", "2", "--batch-size", "8",
            "--text-len", "2", "--visual-len", "2", "--no-progress", "--val-fraction", "0.2", "--test-fraction", "0"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "marks from" in err and "40 marks on 2 queries" in err
    extra = read_prompt_file(out).extra
    assert extra["feedback"]["marks"] == 40 and extra["train_images"] < 40  # marked images only, validation apart
    assert main(["index", str(bare_folder), "--prompts", str(out), "--out", str(index), "--force", "--no-progress"]) == 0
    listed = client.get(url, params={"query": "a circle"}).json()
    assert listed["count"] == count and all(m["image_id"] is not None for m in listed["marks"])
    assert client.get("/api/databases").json()[0]["prompt_sha256"] == file_sha256(out)  # the new index is served


def test_training_from_marks_leaves_a_database_the_caller_passed_as_it_was(bare_folder, tmp_path):
    import contextlib

    import dbprompt
    from dbprompt.marks import MarkStore, marks_path

    database = load_database(bare_folder)
    index = tmp_path / "photos.index"
    with contextlib.closing(MarkStore(marks_path(index))) as store:
        for record in database.records[:12]:
            store.add("a circle", record.key, "h", record.key.startswith("circle/"), "p")
    dbprompt.train(database, tmp_path / "p.safetensors", model="dbprompt-tiny", pretrained="random", feedback=index, epochs=1,
                   batch_size=8, text_len=2, visual_len=2, val_fraction=0.3, test_fraction=0)
    assert len(database.records) == 40 and all(r.captions == () for r in database.records)
