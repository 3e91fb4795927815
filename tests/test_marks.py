"""Marks from the search page: the HTTP API's answers and bounds, and what is kept across rebuilds,
restarts and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient
from search_fixtures import indexed_world, make_prompt_file

import dbprompt.server_marks as server_marks
from dbprompt.index import build_index
from dbprompt.marks import MarkStore, marks_path
from dbprompt.runtime import Runtime
from dbprompt.server import create_app

URL = "/api/databases/shapes/feedback"


@pytest.fixture()
def world(tmp_path, tiny_backbone):
    db, _ = indexed_world(tmp_path, tiny_backbone, name="shapes", domain="source", n=12, seed=1)
    return {"db": db, "index": tmp_path / "shapes", "root": tmp_path}


def _client(world, **kwargs) -> TestClient:
    return TestClient(create_app([world["index"]], runtime=Runtime(), **kwargs))


def test_marks_are_stored_listed_replaced_and_withdrawn(world):
    client = _client(world, feedback=True)
    first = client.post(URL, json={"query": "a red circle", "image_id": 3, "relevant": True})
    assert first.status_code == 200 and first.json() == {"count": 1, "stored": True, "changed": True}
    client.post(URL, json={"query": "A  red circle", "image_id": 4, "relevant": False})  # the same query, another image
    assert client.post(URL, json={"query": "a blue square", "image_id": 3, "relevant": True}).json()["count"] == 3
    again = client.post(URL, json={"query": "a red circle", "image_id": 3, "relevant": False})  # changes its mind
    assert again.json()["count"] == 3
    listed = client.get(URL, params={"query": "a red circle"}).json()
    assert listed["count"] == 3
    assert {q["query"].lower().replace("  ", " "): (q["relevant"], q["irrelevant"]) for q in listed["queries"]} == {
        "a red circle": (0, 2), "a blue square": (1, 0)
    }
    assert sorted((m["image_id"], m["relevant"]) for m in listed["marks"]) == [(3, False), (4, False)]
    gone = client.delete(URL, params={"query": "a red circle", "image_id": 4})
    assert gone.json() == {"count": 2, "stored": False, "changed": True}
    assert client.delete(URL, params={"query": "a red circle", "image_id": 4}).json()["changed"] is False
    assert client.get(URL).json()["marks"] == []


def test_every_bad_request_has_its_status_and_a_message_without_the_input(world, monkeypatch):
    closed = _client(world)
    for response in (closed.get(URL), closed.post(URL, json={"query": "q", "image_id": 0, "relevant": True}), closed.delete(URL, params={"query": "q", "image_id": 0})):
        assert response.status_code == 403 and "--feedback" in response.json()["detail"]
    client = _client(world, feedback=True)
    long = "x" * 501
    cases = {
        404: [client.post(URL, json={"query": "q", "image_id": 999, "relevant": True}),
              client.post("/api/databases/nope/feedback", json={"query": "q", "image_id": 0, "relevant": True})],
        413: [client.post(URL, json={"query": long, "image_id": 0, "relevant": True})],
        422: [client.post(URL, content=b"{not json", headers={"content-type": "application/json"}),
              client.post(URL, json={"query": "q", "image_id": -1, "relevant": True}),
              client.post(URL, json={"query": "q", "image_id": 0})],
        400: [client.post(URL, json={"query": "   ", "image_id": 0, "relevant": True})],
    }
    for status, responses in cases.items():
        for response in responses:
            assert response.status_code == status, response.text
            assert long not in response.text and "not json" not in response.text
    monkeypatch.setattr(server_marks, "RATE_BURST", 3)
    monkeypatch.setattr(server_marks, "RATE_PER_SECOND", 0.01)  # no refill on a slow machine between the posts
    limited = _client(world, feedback=True)
    answers = [limited.post(URL, json={"query": "q", "image_id": i, "relevant": True}).status_code for i in range(6)]
    assert answers[:3] == [200] * 3 and 429 in answers[3:]
    refused = limited.post(URL, json={"query": "q", "image_id": 0, "relevant": True})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"


def test_a_full_store_refuses_new_marks_but_takes_changes(world):
    store = MarkStore(world["root"] / "m.sqlite", max_marks=2)
    assert store.add("q", "a", "h", True, "p") == 1 and store.add("q", "b", "h", True, "p") == 2
    with pytest.raises(ValueError, match="holds 2 marks"):
        store.add("q", "c", "h", True, "p")
    assert store.add("q", "a", "h", False, "p") == 2


def test_marks_outlive_a_rebuild_with_new_prompts_and_a_restart(world, tiny_backbone):
    client = _client(world, feedback=True)
    key = {}
    for image_id in range(5):
        client.post(URL, json={"query": "a shape", "image_id": image_id, "relevant": image_id % 2 == 0})
        key[image_id] = client.get(URL, params={"query": "a shape"}).json()["marks"][-1]["image_key"]
    new_prompts = make_prompt_file(world["root"] / "new.safetensors", tiny_backbone, seed=7)
    build_index(world["db"], new_prompts, world["index"], backbone=tiny_backbone, force=True, progress=False)
    # The running server picks the new index up, and the marks are still there...
    listed = client.get(URL, params={"query": "a shape"}).json()
    assert listed["count"] == 5 and {m["image_key"] for m in listed["marks"]} == set(key.values())
    # ... and after a restart.
    again = _client(world, feedback=True).get(URL, params={"query": "a shape"}).json()
    assert again["count"] == 5 and all(m["image_id"] is not None for m in again["marks"])
    assert marks_path(world["index"]).is_file() and not (world["index"] / "marks.sqlite").exists()


_SERVER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import uvicorn
from dbprompt.backbones import load_backbone
from dbprompt.runtime import Runtime
from dbprompt.server import create_app
from search_fixtures import indexed_world
root = Path(sys.argv[1])
indexed_world(root, load_backbone("dbprompt-tiny"), name="shapes", domain="source", n=12, seed=1)
app = create_app([root / "shapes"], runtime=Runtime(), feedback=True)
print("ready", flush=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


@pytest.mark.slow  # a server process killed while it answers marks
def test_kill_9_while_marking_loses_no_answered_mark(tmp_path):
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(tmp_path), os.path.dirname(__file__), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        answered: list[str] = []
        stop = threading.Event()

        def mark_until_gone() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                while not stop.is_set():
                    query = f"query {len(answered)}"
                    try:
                        response = client.post(URL, json={"query": query, "image_id": len(answered) % 12, "relevant": True})
                    except httpx.TransportError:
                        if server.poll() is not None:
                            return  # killed
                        time.sleep(0.1)  # not listening yet
                        continue
                    if response.status_code == 200:
                        answered.append(query)
                    time.sleep(0.05)  # about the server's rate; a 429 is simply not answered 200

        poster = threading.Thread(target=mark_until_gone)
        poster.start()
        deadline = time.monotonic() + 60
        while len(answered) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)  # while the poster is mid-request
        server.wait()
        stop.set()
        poster.join(10)
    finally:
        server.kill()
        server.wait()
    assert len(answered) >= 40
    kept = {m.query for m in MarkStore(marks_path(tmp_path / "shapes")).marks()}
    assert set(answered) <= kept


@pytest.mark.slow  # a real browser
def test_the_page_marks_results_and_shows_them_after_a_reload(world, tmp_path):
    from chromium import CHROMIUM, launched
    from search_fixtures import running_server

    if not CHROMIUM.exists() and os.environ.get("CI") != "true":
        pytest.skip("needs the Debian chromium package at /usr/bin/chromium")

    query = "a large red circle on the left"
    with running_server(create_app([world["index"]], runtime=Runtime(), feedback=True)) as base, launched() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(f"{base}/?q={query.replace(' ', '+')}")
        page.wait_for_selector("#results .result .mark.yes")
        page.click("#results .result >> nth=0 >> .mark.yes")
        page.click("#results .result >> nth=1 >> .mark.no")
        page.wait_for_selector("#results .result.is-irrelevant")
        # In the viewer, with the keyboard: the third result relevant.
        page.click("#results .result >> nth=2 >> img")
        page.wait_for_function("() => document.querySelector('#viewer').open")
        page.keyboard.press("y")
        page.wait_for_function("() => document.querySelectorAll('#results .result.is-relevant').length === 2")
        page.keyboard.press("Escape")
        page.screenshot(path=str(tmp_path / "marks.png"))
        page.reload()
        page.wait_for_selector("#results .result.is-relevant")
        states = page.eval_on_selector_all(
            "#results .result", "cards => cards.slice(0, 4).map(c => c.classList.contains('is-relevant') ? 'yes' : c.classList.contains('is-irrelevant') ? 'no' : '')"
        )
        assert states == ["yes", "no", "yes", ""]
        assert "3 marked for this query" in page.inner_text("#marks-status")
        # A second press withdraws.
        page.click("#results .result >> nth=1 >> .mark.no")
        page.wait_for_function("() => !document.querySelector('#results .result.is-irrelevant')")
    assert errors == []
    assert MarkStore(marks_path(world["index"])).count() == 2


def test_a_stopped_server_closes_its_mark_stores_and_indexes(world):
    wal = marks_path(world["index"]).with_name(marks_path(world["index"]).name + "-wal")
    with _client(world, feedback=True) as client:
        assert client.post(URL, json={"query": "a red circle", "image_id": 3, "relevant": True}).status_code == 200
        (store,) = client.app.state.mark_stores.values()
        assert wal.exists()  # WAL: the mark is in the log until a checkpoint
    assert not wal.exists()  # folded into the store when it closed
    with pytest.raises(Exception, match="closed"):
        store.count()
    assert MarkStore(marks_path(world["index"])).count() == 1
