"""The JSON API over two databases that share one tiny backbone, each with its own prompts."""

from __future__ import annotations

import io
import re
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from search_fixtures import indexed_world, running_server

import dbprompt.server as server_module
from dbprompt.data import load_database
from dbprompt.runtime import Runtime
from dbprompt.model import PromptedCLIP
from dbprompt.server import create_app

QUERIES = [
    f"a {size} {colour} {shape}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue", "yellow", "purple")
    for shape in ("circle", "square", "triangle", "heart", "cross")
]  # 50 distinct queries


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("search")
    shapes_db, _ = indexed_world(root, tiny_backbone, name="shapes", domain="source", n=30, seed=1)
    textual_db, _ = indexed_world(root, tiny_backbone, name="textual", domain="textual", n=20, seed=2, kind="hnsw")
    return {
        "root": root,
        "dirs": [root / "shapes", root / "textual"],
        "keys": {
            name: {r.key: r for r in load_database(db).records}
            for name, db in (("shapes", shapes_db), ("textual", textual_db))
        },
    }


@pytest.fixture(scope="module")
def app(world):
    return create_app(world["dirs"], runtime=Runtime())


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def live(app):
    """The app over real HTTP on a loopback port."""
    with running_server(app) as base:
        yield base


def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written: HTTP clients would normalise the `..` away."""
    host, port = httpx.URL(base).host, httpx.URL(base).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    return int(data.split(b" ", 2)[1]), data


def test_lists_databases_without_leaking_paths(client, world, tiny_backbone):
    response = client.get("/api/databases")
    assert response.status_code == 200
    listed = {db["name"]: db for db in response.json()}
    assert set(listed) == {"shapes", "textual"}
    assert (listed["shapes"]["count"], listed["textual"]["count"]) == (30, 20)
    assert (listed["shapes"]["kind"], listed["textual"]["kind"]) == ("exact", "hnsw")
    assert {db["fingerprint"] for db in listed.values()} == {tiny_backbone.fingerprint()}
    assert listed["shapes"]["prompt_sha256"] != listed["textual"]["prompt_sha256"]
    assert str(world["root"]) not in response.text


def test_one_backbone_is_shared_and_each_database_uses_its_own_prompts(app, world):
    searchers = app.state.searchers
    assert searchers["shapes"].model.backbone is searchers["textual"].model.backbone
    query = "a large red circle on the left"
    for name, directory in zip(("shapes", "textual"), world["dirs"]):
        model = PromptedCLIP.from_prompt_file(directory / "prompts.safetensors", searchers[name].model.backbone)
        expected = model.encode_texts([query])[0].detach().numpy()
        np.testing.assert_allclose(searchers[name].encode_text(query), expected, atol=1e-5)
    assert not np.allclose(searchers["shapes"].encode_text(query), searchers["textual"].encode_text(query), atol=1e-3)


@pytest.mark.parametrize("name", ["shapes", "textual"])
def test_text_search_returns_ranked_images_of_that_database(client, world, name):
    response = client.get(f"/api/databases/{name}/search", params={"q": "a small blue square", "k": 7})
    assert response.status_code == 200
    body = response.json()
    assert (body["database"], body["query"], body["k"]) == (name, "a small blue square", 7)
    results = body["results"]
    assert len(results) == 7
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    records = world["keys"][name]
    for r in results:
        assert r["key"] in records and tuple(r["captions"]) == records[r["key"]].captions
        assert r["image_url"] == f"/api/databases/{name}/images/{r['id']}"
        assert r["thumbnail_url"] == f"/api/databases/{name}/thumbnails/{r['id']}"


def test_image_search_finds_the_uploaded_image_first(client, world):
    record = world["keys"]["shapes"]["images/000011.png"]
    files = {"image": ("query.png", record.path.read_bytes(), "image/png")}
    response = client.post("/api/databases/shapes/search/image", files=files, params={"k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["query"] is None and len(body["results"]) == 3
    assert body["results"][0]["key"] == "images/000011.png"
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_images_and_thumbnails_are_served(client, world):
    hit = client.get("/api/databases/textual/search", params={"q": "anything", "k": 1}).json()["results"][0]
    image = client.get(hit["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == world["keys"]["textual"][hit["key"]].path.read_bytes()
    thumb = client.get(hit["thumbnail_url"], params={"size": 16})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 16


def test_page_and_openapi_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>dbprompt search</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    assert scripts == [f"static/{name}.js" for name in ("common", "marks", "about", "app", "drop")]
    for asset in ("/", "/static/style.css", *(f"/{src}" for src in scripts)):
        response = client.get(asset)
        assert response.status_code == 200
        assert "http:" not in response.text and "https:" not in response.text and "//" + "cdn" not in response.text
    schema = client.get("/openapi.json").json()
    assert {"/api/databases", "/api/databases/{name}/search", "/api/databases/{name}/search/image"} <= set(
        schema["paths"]
    )
    for docs in ("/docs", "/redoc"):  # the API docs work offline: their scripts come from this server
        page = client.get(docs)
        assert page.status_code == 200
        scripts = re.findall(r'<script src="([^"]+)"', page.text)
        assert scripts and all(src.startswith("/") for src in scripts)
        assert all(client.get(src).status_code == 200 for src in scripts)


BAD_REQUESTS = [
    ("get", "/api/databases/nope/search?q=red", 404, "no such database; known: shapes, textual"),
    ("get", "/api/databases/shapes/search?q=", 422, "at least 1 character"),
    ("get", "/api/databases/shapes/search?q=%20%20", 400, "the query is empty"),
    ("get", "/api/databases/shapes/search", 422, "Field required"),
    ("get", "/api/databases/shapes/search?q=" + "a" * 501, 422, "at most 500 characters"),
    ("get", "/api/databases/shapes/search?q=red&k=0", 422, "greater than or equal to 1"),
    ("get", "/api/databases/shapes/search?q=red&k=101", 422, "less than or equal to 100"),
    ("get", "/api/databases/shapes/search?q=red&k=ten", 422, "valid integer"),
    ("get", "/api/databases/shapes/images/30", 404, "has no image 30"),
    ("get", "/api/databases/shapes/images/-1", 422, "greater than or equal to 0"),
    ("get", "/api/databases/shapes/images/99999999999999999999999", 422, "less than or equal to"),
    ("get", "/api/databases/shapes/thumbnails/0?size=100000", 422, "less than or equal to 1024"),
    ("post", "/api/databases/shapes/search/image", 422, "Field required"),
]


@pytest.mark.parametrize("method, url, status, message", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_a_message(client, method, url, status, message):
    response = getattr(client, method)(url)
    assert response.status_code == status
    assert message in json.dumps(response.json()["detail"])


@pytest.mark.parametrize("url", ["/api/databases/{x}/images/0", "/api/databases/{x}/search?q=red", "/api/databases/shapes/search?q=red&k={x}"])
def test_errors_never_echo_what_the_client_sent(client, url):
    response = client.get(url.format(x="A" * 60_000))
    assert 400 <= response.status_code < 500 and "AAAA" not in response.text and len(response.content) < 2_000


PATH_TRAVERSALS = [
    "/api/databases/shapes/images/../../../../etc/passwd",
    "/api/databases/shapes/images/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/databases/..%2F..%2Fetc/images/0",
    "/api/databases/shapes/images/0%2F..%2F..%2Fmetadata.jsonl",
    "/api/databases/shapes/thumbnails/..%2Fmanifest.json",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2Fserver.py",
    "/static/%2Fetc%2Fpasswd",
    "/static//etc/passwd",
    "/etc/passwd",
    "/api/databases/shapes/images/%2Fetc%2Fpasswd",
]


@pytest.mark.parametrize("url", PATH_TRAVERSALS)
def test_path_traversal_is_refused(live, url):
    status, data = raw_get(live, url)
    assert 400 <= status < 500
    assert b"root:" not in data and b"import" not in data
    assert raw_get(live, "/static/app.js")[0] == 200  # the same route serves what it should


def test_a_file_swapped_after_indexing_is_not_served(tmp_path, tiny_backbone):
    db, info = indexed_world(tmp_path, tiny_backbone, name="swap", domain="source", n=4, seed=3)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0 do not serve me\n")
    target = db / "images" / "000001.png"
    target.unlink()
    os.symlink(secret, target)
    # Forged: other bytes of the same size, the modification time put back.
    forged = db / "images" / "000003.png"
    st = forged.stat()
    forged.write_bytes(bytes(st.st_size))
    os.utime(forged, ns=(st.st_atime_ns, st.st_mtime_ns))
    with TestClient(create_app([info.path], runtime=Runtime()), raise_server_exceptions=False) as client:
        for what in ("images", "thumbnails"):
            response = client.get(f"/api/databases/swap/{what}/1")
            assert response.status_code == 404 and "resolves outside the indexed folder" in response.json()["detail"]
            assert "root:" not in response.text
            response = client.get(f"/api/databases/swap/{what}/3")
            assert response.status_code == 404 and "changed since indexing" in response.json()["detail"]
        (db / "images" / "000002.png").unlink()
        response = client.get("/api/databases/swap/images/2")
        assert response.status_code == 404 and "no longer on disk" in response.json()["detail"]
        assert client.get("/api/databases/swap/images/0").status_code == 200
        # Deleted images drop out of results; changed ones stay, unserved.
        ids = [r["id"] for r in client.get("/api/databases/swap/search", params={"q": "a shape", "k": 4}).json()["results"]]
        assert sorted(ids) == [0, 1, 3]


def test_uploads_are_limited_and_checked(world, monkeypatch):
    app = create_app(world["dirs"], runtime=Runtime(), max_upload_bytes=4096)
    url = "/api/databases/shapes/search/image"
    big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG")
    assert len(buf.getvalue()) > 4096
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(url, files={"image": ("big.png", buf.getvalue(), "image/png")})
        assert response.status_code == 413 and "4096" in response.json()["detail"]
        # a body far over the limit is refused from its Content-Length, before it is read
        form = {"content-type": "multipart/form-data; boundary=x"}
        response = client.post(url, content=b"x" * 200_000, headers=form)
        assert response.status_code == 413
        # a body of unknown length (chunked) is refused too
        response = client.post(url, content=iter([b"--x\r\n", b"x" * 100]), headers=form)
        assert response.status_code == 411
        response = client.post(url, files={"image": ("notes.txt", b"just some text", "text/plain")})
        assert response.status_code == 400 and "not a readable image" in response.json()["detail"]
        truncated = world["keys"]["shapes"]["images/000000.png"].path.read_bytes()[:60]
        response = client.post(url, files={"image": ("cut.png", truncated, "image/png")})
        assert response.status_code == 400
        monkeypatch.setattr(server_module, "MAX_UPLOAD_PIXELS", 100)
        small = io.BytesIO()
        Image.new("RGB", (20, 20)).save(small, "PNG")
        response = client.post(url, files={"image": ("wide.png", small.getvalue(), "image/png")})
        assert response.status_code == 413 and "pixels" in response.json()["detail"]


@pytest.mark.slow  # 4000 requests over real HTTP: over 10 s on one core
def test_twenty_parallel_clients_two_hundred_queries_each(live, client):
    """Over real HTTP: 4000 requests, 0 errors, every answer identical to the sequential one."""
    expected = {}
    for i, q in enumerate(QUERIES):
        name = ("shapes", "textual")[i % 2]
        results = client.get(f"/api/databases/{name}/search", params={"q": q}).json()["results"]
        expected[q] = (name, [r["id"] for r in results])

    def one_client(worker: int) -> list[str]:
        errors = []
        with httpx.Client(base_url=live, timeout=30) as http:
            for j in range(200):
                q = QUERIES[(worker * 7 + j) % len(QUERIES)]
                name, ids = expected[q]
                response = http.get(f"/api/databases/{name}/search", params={"q": q})
                if response.status_code != 200:
                    errors.append(f"{q}: {response.status_code} {response.text[:100]}")
                elif [r["id"] for r in response.json()["results"]] != ids:
                    errors.append(f"{q}: different results")
        return errors

    with ThreadPoolExecutor(max_workers=20) as pool:
        errors = [e for result in pool.map(one_client, range(20)) for e in result]
    assert errors == []
