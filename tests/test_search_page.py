"""What the search page needs from the API: paging past 100, a folder filter, a header, example queries,
a weak-match line calibrated per index, downloads of the original, and databases named by `serve`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from search_fixtures import foldered_world, indexed_world, set_weak_line

from dbprompt.index.calibration import (
    LEGACY_WEAK_BELOW,
    NONSENSE,
    threshold,
    weak_below,
)
from dbprompt.index.metadata import ImageRow
from dbprompt.runtime import Runtime
from dbprompt.searcher import named_dirs, open_index
from dbprompt.server import create_app
from dbprompt.server_images import file_name

N = 240  # images: pages of 100 run out on the third
QUERY = "a large red circle on the left"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("page")
    db, info = foldered_world(root, tiny_backbone, n=N, seed=3)
    _, plain = indexed_world(root, tiny_backbone, name="plain", domain="source", n=20, seed=4)
    return {"root": root, "db": db, "index": info.path, "plain": plain.path}


@pytest.fixture(scope="module")
def client(world):
    with TestClient(create_app({"photos": world["index"], "plain": world["plain"]}, runtime=Runtime())) as c:
        yield c


def _ids(client, **params) -> list[int]:
    response = client.get("/api/databases/photos/search", params={"q": QUERY} | params)
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def test_pages_continue_one_another_past_100_without_repeats(world, client):
    pages = [_ids(client, k=100, offset=offset) for offset in (0, 100, 200)]
    assert [len(p) for p in pages] == [100, 100, N - 200]
    joined = [i for page in pages for i in page]
    assert len(set(joined)) == N  # every image once
    with open_index(world["index"], runtime=Runtime()) as searcher:
        assert joined == [h.image.id for h in searcher.search(QUERY, N)]  # the very ranking of one long search
    assert _ids(client, k=30, offset=70) == joined[70:100]
    assert client.get("/api/databases/photos/search", params={"q": QUERY, "offset": 901}).status_code == 422


def test_image_search_pages_too(world, client):
    png = (world["db"] / "a" / "000000.png").read_bytes()

    def page(offset: int) -> list[int]:
        response = client.post(f"/api/databases/photos/search/image?k=100&offset={offset}", files={"image": ("q.png", png, "image/png")})
        assert response.status_code == 200 and response.json()["offset"] == offset
        return [r["id"] for r in response.json()["results"]]

    first, second = page(0), page(100)
    assert len(first) == len(second) == 100 and not set(first) & set(second)


def test_a_folder_filter_returns_k_images_of_that_folder_in_ranking_order(world, client):
    folders = client.get("/api/databases").json()[0]["folders"]
    assert folders == {"a": N // 4, "b": N - N // 4}
    with open_index(world["index"], runtime=Runtime()) as searcher:
        ranking = [h.image for h in searcher.search(QUERY, N)]
        in_a = [row.id for row in ranking if searcher.index.folder_of(row) == "a"]
    # Folder a is a quarter of the images: its best 50 lie deep in the ranking, and all come back.
    assert _ids(client, k=50, folder="a") == in_a[:50]
    assert _ids(client, k=50, offset=50, folder="a") == in_a[50:]
    response = client.get("/api/databases/photos/search", params={"q": QUERY, "folder": "secret/../path"})
    assert response.status_code == 400 and "secret" not in response.text
    png = (world["db"] / "b" / "000001.png").read_bytes()
    response = client.post("/api/databases/photos/search/image?k=20&folder=a", files={"image": ("q.png", png, "image/png")})
    keys = [r["key"] for r in response.json()["results"]]
    assert len(keys) == 20 and all(key.startswith("a/") for key in keys)


def test_the_database_list_says_what_each_database_is(world, client):
    photos, plain = client.get("/api/databases").json()
    assert photos["name"] == "photos" and photos["count"] == N
    assert photos["prompt_file"] == "foldered.safetensors" and photos["prompt_modified"].endswith("+00:00")
    assert photos["prompts"] == "textual+visual" and photos["val_r1"] is None  # random prompts: nothing trained to report
    captions = {json.loads(line)["text"][0] for line in (world["db"] / "metadata.jsonl").read_text().splitlines()}
    assert 3 <= len(photos["examples"]) <= 6 and len(set(photos["examples"])) == len(photos["examples"])
    assert set(photos["examples"]) <= captions
    assert plain["folders"] == {}  # one folder: nothing to filter by
    assert photos["weak_calibrated"] and plain["weak_calibrated"]


def test_the_weak_match_line_comes_from_the_statistics_kept_at_index_time():
    assert weak_below({}) == (LEGACY_WEAK_BELOW, False)  # an index built before: today's line
    assert weak_below({"nonsense_best": {"q90": 0.6}}) == (0.6, True)
    assert weak_below({"nonsense_best": {"q90": 0.6}, "caption_best": {"q10": 0.8}}) == (0.7, True)
    assert threshold(0.66, 0.74) == pytest.approx(0.70)  # e.g. a backbone where nonsense scores 0.685
    for bad in ({"nonsense_best": {"q90": "0.6"}}, {"nonsense_best": {"q90": float("nan")}}, {"nonsense_best": [0.6]}):
        assert weak_below(bad) == (LEGACY_WEAK_BELOW, False)  # a manifest may come from anyone


def test_the_statistics_are_those_queries_see(world):
    """The nonsense scores measured at index time are the best scores these texts get from a search."""
    stats = json.loads((world["plain"] / "manifest.json").read_text())["calibration"]
    assert stats["nonsense_queries"] == len(NONSENSE) and stats["caption_queries"] == 20
    with open_index(world["plain"], runtime=Runtime()) as searcher:
        best = np.array([searcher.search(text, 1)[0].score for text in NONSENSE])
    assert np.quantile(best, 0.9) == pytest.approx(stats["nonsense_best"]["q90"], abs=1e-4)
    assert np.quantile(best, 0.5) == pytest.approx(stats["nonsense_best"]["q50"], abs=1e-4)


def test_a_query_under_the_line_is_flagged_weak_and_one_over_it_is_not(world, client, tmp_path):
    import shutil

    index = tmp_path / "lined"
    shutil.copytree(world["plain"], index)
    with TestClient(create_app([index], runtime=Runtime())) as c:
        def best(q: str) -> tuple[float, bool]:
            body = c.get("/api/databases/lined/search", params={"q": q, "k": 3}).json()
            return body["results"][0]["score"], body["weak"]

        scores = {q: best(q)[0] for q in ("glorp snib wuzzle", QUERY)}
        low, high = sorted(scores, key=scores.get)
        assert scores[low] < scores[high]
        line = (scores[low] + scores[high]) / 2
        set_weak_line(index, line)  # the server sees the new manifest on the next request
        assert c.get("/api/databases").json()[0]["weak_below"] == pytest.approx(line, abs=1e-6)
        assert best(low)[1] is True and best(high)[1] is False
        answer = c.get("/api/databases/lined/search", params={"q": low, "k": 3}).json()
        assert answer["weak_below"] == pytest.approx(line, abs=1e-6)  # what the page's hint quotes
        later = c.get("/api/databases/lined/search", params={"q": low, "k": 3, "offset": 3}).json()
        assert later["weak"] is False  # the first page decides: later ones are weaker by construction


def test_the_original_downloads_as_an_attachment_under_a_safe_name(client):
    shown = client.get("/api/databases/photos/images/4")
    assert shown.status_code == 200 and "content-disposition" not in shown.headers
    saved = client.get("/api/databases/photos/images/4?download=1")
    assert saved.content == shown.content
    assert saved.headers["content-disposition"] == 'attachment; filename="000004.png"'
    odd = ImageRow(7, 'x/"; evil\r\nname.PNG', Path("/a/b.png"), (), 0, 0, 1, 1, "")
    assert file_name(odd, "image/png") == "evil_name.PNG"
    assert file_name(ImageRow(7, "shard/00001", Path("/a/s.tar"), (), 0, 0, 1, 1, ""), "image/jpeg") == "00001.jpg"
    assert file_name(ImageRow(7, "../..", Path("/a/s.tar"), (), 0, 0, 1, 1, ""), "image/png") == "image-7.png"


def test_databases_are_named_by_their_folder_or_as_asked(world):
    assert list(named_dirs([world["index"], ("holiday", world["plain"])])) == ["foldered", "holiday"]
    with pytest.raises(ValueError, match="two databases are named 'plain'"):
        named_dirs([world["plain"], ("plain", world["index"])])
    for bad in ("", "a b", ".hidden", "x/y", "é"):
        with pytest.raises(ValueError, match="a database name is"):
            named_dirs({bad: world["plain"]})


@pytest.mark.parametrize(
    "spec, problem",
    [("a b={plain}", "a database name is"), ("x={plain}", "two databases are named 'x'")],
)
def test_serve_refuses_a_bad_or_repeated_name_before_it_listens(world, spec, problem):
    specs = [spec.format(plain=world["plain"])]
    if "two" in problem:
        specs.append(f"x={world['index']}")
    result = subprocess.run([sys.executable, "-m", "dbprompt", "serve", *specs], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and problem in result.stderr and "Traceback" not in result.stderr


def test_the_header_reports_what_training_recorded(tmp_path, tiny_backbone):
    """Validation R@1 before training (epoch 0) and at the epoch kept, as the prompt file records them."""
    import torch
    from tinydata import write_database

    from dbprompt.index import build_index
    from dbprompt.model import PromptedCLIP
    from dbprompt.prompts import PromptConfig

    history = [
        {"epoch": 0, "train_loss": None, "val_score": 10.0, "clip_benchmark/t2i_R@1": 10.0},
        {"epoch": 1, "train_loss": 0.9, "val_score": 30.0, "clip_benchmark/t2i_R@1": 30.0},
        {"epoch": 2, "train_loss": 0.8, "val_score": 20.0, "clip_benchmark/t2i_R@1": 20.0},
    ]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PromptedCLIP(tiny_backbone, PromptConfig(text_len=4, visual_len=0, vocab=0, visual_adapter=0))
    prompts = model.save_prompt_file(
        tmp_path / "trained.safetensors", {"history": history, "best_epoch": 1, "database": "shapes", "train_images": 24}
    )
    db = write_database(tmp_path / "db", 12, seed=0, image_size=16)
    info = build_index(db, prompts, tmp_path / "trained", backbone=tiny_backbone, progress=False)
    with TestClient(create_app([info.path], runtime=Runtime())) as c:
        (about,) = c.get("/api/databases").json()
    assert about["prompts"] == "textual" and about["prompt_file"] == "trained.safetensors"
    assert about["trained_on"] == "shapes" and about["train_images"] == 24
    assert about["val_r1"] == {"zero_shot": 10.0, "trained": 30.0, "epoch": 1}


def test_indexing_again_measures_an_old_index_s_line_without_embedding_anything(tmp_path, tiny_backbone):
    from dbprompt.index import build_index

    db, info = indexed_world(tmp_path, tiny_backbone, name="old", domain="source", n=10, seed=7)
    manifest = json.loads((info.path / "manifest.json").read_text())
    del manifest["calibration"], manifest["prompt_source"]  # as an index built before they were kept
    (info.path / "manifest.json").write_text(json.dumps(manifest))
    with TestClient(create_app([info.path], runtime=Runtime())) as c:
        assert c.get("/api/databases").json()[0]["weak_calibrated"] is False
    again = build_index(db, tmp_path / "old.safetensors", info.path, backbone=tiny_backbone, progress=False)
    assert again.last_build["embedded"] == 0 and again.calibration == info.calibration
