"""Tags: kept from a database's tags column in its index, listed with their counts, and a search filter in the
Python API, the HTTP API and the CLI; an index made before tags were kept opens and searches as it is, and
indexing again adds them without embedding anything."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from search_fixtures import foldered_world, holiday_tags, make_prompt_file, write_folder

from dbprompt.cli import main
from dbprompt.index import about, all_vectors, build_index, load_index
from dbprompt.runtime import Runtime
from dbprompt.searcher import open_index
from dbprompt.server import create_app

N = 240
QUERY = "a large red circle on the left"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("tags")
    db, info = foldered_world(root, tiny_backbone, n=N, seed=7, tags=holiday_tags)
    with open_index(info.path, runtime=Runtime()) as searcher:
        ranking = [h.image for h in searcher.search(QUERY, N)]
    return {"db": db, "index": info.path, "ranking": ranking}


@pytest.fixture(scope="module")
def client(world):
    with TestClient(create_app({"photos": world["index"]}, runtime=Runtime())) as c:
        yield c


def _search(client, **params) -> dict:
    response = client.get("/api/databases/photos/search", params={"q": QUERY} | params)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_index_keeps_each_image_s_tags_and_lists_the_most_frequent(world, client, monkeypatch):
    assert all(row.tags == tuple(holiday_tags(int(Path(row.key).stem))) for row in world["ranking"])
    listed = client.get("/api/databases").json()[0]["tags"]
    assert list(listed.items()) == [("beach", 120), ("city", 120), ("family", 80), ("sunset", 48)]  # by count, then name
    monkeypatch.setattr(about, "MAX_TAGS", 2)
    assert client.get("/api/databases").json()[0]["tags"] == {"beach": 120, "city": 120}
    assert len(_search(client, tag="sunset")["results"]) == 10  # a tag not listed still filters


def test_a_tag_filter_returns_k_images_with_that_tag_in_ranking_order(world, client):
    sunset = [row.id for row in world["ranking"] if "sunset" in row.tags]
    first = _search(client, k=20, tag="sunset")
    assert [r["id"] for r in first["results"]] == sunset[:20] and first["tag"] == "sunset"
    assert all("sunset" in r["tags"] for r in first["results"])
    assert [r["id"] for r in _search(client, k=20, offset=20, tag="sunset")["results"]] == sunset[20:40]
    # With a folder too, both: 12 images of folder a are tagged sunset, fewer than k, and all come back.
    both = [row.id for row in world["ranking"] if "sunset" in row.tags and row.key.startswith("a/")]
    assert len(both) == 12 and [r["id"] for r in _search(client, k=50, tag="sunset", folder="a")["results"]] == both
    assert [r["id"] for r in _search(client, k=5, tag=" sunset ")["results"]] == sunset[:5]  # as the readers strip tags
    png = (world["db"] / "b" / "000001.png").read_bytes()
    response = client.post("/api/databases/photos/search/image?k=20&tag=family", files={"image": ("q.png", png, "image/png")})
    results = response.json()["results"]
    assert len(results) == 20 and all("family" in r["tags"] for r in results)


def test_an_unknown_tag_is_refused_without_repeating_it(world, client):
    response = client.get("/api/databases/photos/search", params={"q": QUERY, "tag": "secret-word"})
    assert response.status_code == 400 and "secret" not in response.text and "tag" in response.json()["detail"]
    png = (world["db"] / "b" / "000001.png").read_bytes()
    response = client.post("/api/databases/photos/search/image?tag=secret-word", files={"image": ("q.png", png, "image/png")})
    assert response.status_code == 400 and "secret" not in response.text
    response = client.get("/api/databases/photos/search", params={"q": QUERY, "tag": "secret" * 200})
    assert response.status_code == 422 and "secret" not in response.text
    with open_index(world["index"], runtime=Runtime()) as searcher, pytest.raises(ValueError, match="tag asked for"):
        searcher.search(QUERY, tag="Sunset")  # exact: tags are not case-folded


def test_the_cli_searches_by_tag_and_folder(world, capsys):
    argv = ["search", str(world["index"]), QUERY, "-k", "5", "--tag", "sunset", "--folder", "a", "--json"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    expected = [row.key for row in world["ranking"] if "sunset" in row.tags and row.key.startswith("a/")][:5]
    assert [r["key"] for r in results] == expected and all("sunset" in r["tags"] for r in results)
    assert main(["search", str(world["index"]), QUERY, "--tag", "nowhere"]) == 2
    assert "no image of the index has the tag asked for" in capsys.readouterr().err


def _set_tags(db: Path, tags: dict[str, list[str]]) -> None:
    """Rewrite only the metadata of a search_fixtures.write_folder database: `tags` by file name, none for the rest."""
    rows = [json.loads(line) for line in (db / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("tags", None)
        row |= {"tags": tags[row["file_name"]]} if row["file_name"] in tags else {}
    (db / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _vectors(index_dir: Path) -> dict[str, np.ndarray]:
    index = load_index(index_dir)
    try:
        return {row.key: all_vectors(index.vectors)[row.id] for row in index.all_rows()}
    finally:
        index.close()


@pytest.fixture
def six(tmp_path, tiny_backbone) -> tuple[Path, Path]:
    """Six solid-colour images, two tagged, and a prompt file."""
    db = write_folder(tmp_path / "db", {f"{i}.png": ((40 * i, 0, 255 - 40 * i), f"colour {i}") for i in range(6)})
    _set_tags(db, {"images/0.png": ["red"], "images/1.png": ["red", "blue"]})
    return db, make_prompt_file(tmp_path / "p.safetensors", tiny_backbone, seed=2)


def test_indexing_again_takes_changed_tags_without_embedding(tmp_path, tiny_backbone, six):
    db, prompts = six
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    before = _vectors(tmp_path / "idx")
    with open_index(tmp_path / "idx", runtime=Runtime()) as searcher:
        assert searcher.index.tags == {"red": 2, "blue": 1}
    _set_tags(db, {"images/0.png": ["green"], "images/3.png": [" gold ", "red", "gold"]})
    info = build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    assert (info.last_build["embedded"], info.last_build["reused"]) == (0, 6)  # tags are metadata, not pixels
    with open_index(tmp_path / "idx", runtime=Runtime()) as searcher:
        assert searcher.index.tags == {"gold": 1, "green": 1, "red": 1}
        assert [h.image.key for h in searcher.search("colour 1", 6, tag="gold")] == ["images/3.png"]
        assert searcher.index.row(3).tags == ("gold", "red")
    after = _vectors(tmp_path / "idx")
    assert all(np.array_equal(before[key], after[key]) for key in before)


def test_an_index_made_before_tags_opens_searches_and_gains_them_when_indexed_again(tmp_path, tiny_backbone, six):
    db, prompts = six
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    with sqlite3.connect(tmp_path / "idx" / "metadata.sqlite") as con:
        con.execute("ALTER TABLE images DROP COLUMN tags")  # as dbprompt wrote it before tags were kept
    con.close()
    with open_index(tmp_path / "idx", runtime=Runtime()) as searcher:
        assert len(searcher.search("colour 2", 6)) == 6 and searcher.index.row(0).tags == ()
        assert searcher.index.tags == {} and about.describe(searcher.index)["tags"] == {}
        with pytest.raises(ValueError, match="tag asked for"):
            searcher.search("colour 2", 6, tag="red")
    info = build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    assert info.last_build["embedded"] == 0
    with open_index(tmp_path / "idx", runtime=Runtime()) as searcher:
        assert searcher.index.tags == {"red": 2, "blue": 1}
        assert {h.image.key for h in searcher.search("colour 2", 6, tag="red")} == {"images/0.png", "images/1.png"}


def test_a_tag_on_every_image_is_not_offered_as_a_filter_but_one_on_some_is(tmp_path, tiny_backbone, six):
    db, prompts = six
    _set_tags(db, {f"images/{i}.png": ["mine"] for i in range(6)})
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    with open_index(tmp_path / "idx", runtime=Runtime()) as searcher:
        assert searcher.index.tags == {"mine": 6} and about.describe(searcher.index)["tags"] == {}
    _set_tags(db, {"images/4.png": ["mine"]})
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    with open_index(tmp_path / "idx", runtime=Runtime()) as searcher:
        assert about.describe(searcher.index)["tags"] == {"mine": 1}
