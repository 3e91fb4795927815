"""The search page in real headless Chromium: type a query, see images from the chosen database."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from chromium import CHROMIUM
from search_fixtures import indexed_world, running_server

from dbprompt.data import load_database
from dbprompt.runtime import Runtime
from dbprompt.server import create_app

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists() and os.environ.get("CI") != "true",
        reason="needs the Debian chromium package at /usr/bin/chromium (`apt-get install chromium`); required when CI=true",
    ),
    pytest.mark.slow,  # a real browser
]


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("web")
    dbs = {
        "shapes": indexed_world(root, tiny_backbone, name="shapes", domain="source", n=24, seed=1)[0],
        "textual": indexed_world(root, tiny_backbone, name="textual", domain="textual", n=24, seed=2)[0],
    }
    captions = {name: {c for r in load_database(db).records for c in r.captions} for name, db in dbs.items()}
    assert not captions["shapes"] & captions["textual"]  # so a caption tells the database apart
    with running_server(create_app([root / "shapes", root / "textual"], runtime=Runtime())) as base:
        yield base, captions


def shown(page) -> list[dict]:
    """The result cards once every image in them has loaded."""
    page.wait_for_function(
        """() => {
            const imgs = [...document.querySelectorAll('#results .result img')];
            return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
        }""",
        timeout=10_000,
    )
    return page.eval_on_selector_all(
        "#results .result",
        """cards => cards.map(card => ({
            database: card.dataset.database,
            src: card.querySelector('img').getAttribute('src'),
            caption: card.querySelector('.caption').textContent,
            score: card.querySelector('.score').textContent,
        }))""",
    )


def _page_on_this_server_only(browser, base: str):
    """A page whose requests elsewhere are aborted and listed: the site must not need the internet."""
    outside: list[str] = []
    page = browser.new_page()

    def only_this_server(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    return page, outside


def _search_page(browser, base: str):
    """The search page, ready (databases listed), with its requests elsewhere and its console errors listed."""
    page, outside = _page_on_this_server_only(browser, base)
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.goto(base + "/")
    page.wait_for_function("() => document.querySelectorAll('#database option').length === 2", timeout=10_000)
    return page, outside, console_errors


def test_typing_a_query_shows_images_of_the_selected_database(site, browser):
    base, captions = site
    page, outside, console_errors = _search_page(browser, base)

    for name, query in (("textual", "a tiny crimson lozenge"), ("shapes", "a large red circle on the left")):
        page.select_option("#database", name)
        page.fill("#query", "")
        page.type("#query", query)
        page.press("#query", "Enter")
        page.wait_for_function(
            f"() => document.querySelector('#status').textContent.includes('in {name} (')", timeout=10_000
        )
        cards = shown(page)
        assert len(cards) == 20  # the page's default k
        for card in cards:
            assert card["database"] == name
            assert card["src"].startswith(f"api/databases/{name}/thumbnails/")
            assert card["caption"] in captions[name]
            assert card["score"].startswith("score ")

    page.click("#results .result >> nth=0")
    page.wait_for_function(
        "() => { const img = document.querySelector('#viewer-image');"
        " return document.querySelector('#viewer').open && img.complete && img.naturalWidth > 0; }",
        timeout=10_000,
    )
    assert "/api/databases/shapes/images/" in page.eval_on_selector("#viewer-image", "img => img.src")
    assert page.eval_on_selector_all("#viewer-captions li", "items => items.length") >= 1

    page.keyboard.press("Escape")
    assert not page.eval_on_selector("#viewer", "dialog => dialog.open")
    # From an empty field: Chrome sometimes sizes an insertion against maxlength as if the text it replaces stayed.
    page.fill("#query", "")
    page.fill("#query", "x" * 600)
    assert len(page.input_value("#query")) == 500  # the page keeps queries within the server's limit
    assert outside == [] and console_errors == []
    page.close()


def _search(page, query: str, database: str) -> list[dict]:
    page.select_option("#database", database)
    page.fill("#query", query)
    page.press("#query", "Enter")
    page.wait_for_function(
        "q => document.querySelector('#status').textContent.includes(q)", arg=f"“{query}” in {database}", timeout=10_000
    )
    return shown(page)


def _status(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#status').textContent.includes(t)", arg=text, timeout=10_000)


def test_image_search_shows_its_query_and_results_lead_to_more(site, browser, tmp_path):
    base, _ = site
    page, outside, console_errors = _search_page(browser, base)
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    assert not page.is_visible("#query-image")

    cards = _search(page, "a large red circle on the left", "shapes")  # the weak-match hint: test_search_page_web.py

    # "Search this caption" runs the result's caption as a text query.
    page.click("#results .result >> nth=3 >> .search-caption")
    _status(page, f"“{cards[3]['caption']}” in shapes")
    assert page.input_value("#query") == cards[3]["caption"]

    # "More like this" posts the result's image to the image search and shows it as the query.
    page.click("#results .result >> nth=0 >> .more-like")
    _status(page, "images like")
    assert any(url.endswith("/api/databases/shapes/search/image?k=20") for url in posted)
    page.wait_for_function("() => { const img = document.querySelector('#query-image-img'); return img.complete && img.naturalWidth > 0; }")
    assert page.is_visible("#query-image") and page.input_value("#query") == ""
    similar = shown(page)
    assert len(similar) == 20 and all(card["database"] == "shapes" for card in similar)
    assert not page.is_visible("#hint")  # an image query gets no weak-match hint: its line is for text

    # An uploaded file is shown too, with its name; a text search puts it away.
    page.set_input_files("#image", files=[{"name": "mine.png", "mimeType": "image/png", "buffer": _a_png(tmp_path)}])
    _status(page, "results for mine.png in shapes")
    assert "mine.png" in page.text_content("#query-image-label")
    _search(page, "a large red circle on the left", "shapes")
    assert not page.is_visible("#query-image")
    assert outside == [] and console_errors == []
    page.close()


def _a_png(tmp_path: Path) -> bytes:
    from PIL import Image

    path = tmp_path / "query.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path.read_bytes()


def test_an_error_clears_the_results(site, browser):
    page, outside, _ = _search_page(browser, site[0])
    assert len(_search(page, "a large red circle on the left", "shapes")) == 20
    assert page.is_enabled("#download")
    page.set_input_files("#image", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
    page.wait_for_function("() => document.querySelector('#status').classList.contains('error')", timeout=10_000)
    assert "not a readable image" in page.text_content("#status")
    assert page.eval_on_selector_all("#results .result", "cards => cards.length") == 0
    assert not page.is_visible("#query-image") and not page.is_visible("#hint") and not page.is_enabled("#download")
    assert outside == []
    page.close()


def test_results_download_as_json(site, browser, tmp_path):
    page, outside, _ = _search_page(browser, site[0])
    cards = _search(page, "a tiny crimson lozenge", "textual")
    with page.expect_download() as download:
        page.click("#download")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    data = json.loads(path.read_text())
    assert path.name.startswith("dbprompt-textual-") and path.suffix == ".json"
    assert data["database"] == "textual" and data["query"] == "a tiny crimson lozenge" and data["query_image"] is None
    assert [r["captions"][0] for r in data["results"]] == [c["caption"] for c in cards]
    assert outside == []
    page.close()


def test_the_viewer_is_driven_by_the_keyboard(site, browser):
    page, outside, _ = _search_page(browser, site[0])
    _search(page, "a large red circle on the left", "shapes")
    ids = page.eval_on_selector_all("#results .result", "cards => cards.map(c => c.dataset.id)")

    def viewing() -> tuple[str, str]:
        src = page.eval_on_selector("#viewer-image", "img => img.getAttribute('src')")
        return page.text_content("#viewer-position"), src.rsplit("/", 1)[1]

    # Keys are handled by the page's own event loop: wait until it has settled and the viewer
    # has opened, rather than read the dialog in the same instant as the key press.
    page.wait_for_load_state("networkidle")
    page.focus("#results .result >> nth=0")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#viewer').open", timeout=10_000)
    assert viewing() == (f"1 / {len(ids)}", ids[0])
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert viewing() == (f"3 / {len(ids)}", ids[2])
    page.keyboard.press("ArrowLeft")
    assert viewing() == (f"2 / {len(ids)}", ids[1])
    page.keyboard.press("End")
    assert viewing() == (f"{len(ids)} / {len(ids)}", ids[-1])
    page.keyboard.press("ArrowRight")  # past the last: stays
    assert viewing() == (f"{len(ids)} / {len(ids)}", ids[-1])
    page.keyboard.press("Escape")
    assert not page.eval_on_selector("#viewer", "dialog => dialog.open")
    # Focus returns to the result the viewer showed last, so Tab and Enter carry on from there. The
    # dialog's close event is queued after the browser restores focus itself: wait for the page's turn.
    page.wait_for_function("id => document.activeElement.dataset.id === id", arg=ids[-1], timeout=10_000)
    # A caption in the viewer searches for itself.
    page.keyboard.press("Enter")
    caption = page.text_content("#viewer-captions button >> nth=0")
    page.click("#viewer-captions button >> nth=0")
    _status(page, f"“{caption}” in shapes")
    assert not page.eval_on_selector("#viewer", "dialog => dialog.open")
    assert outside == []
    page.close()


def test_api_docs_render_offline(site, browser):
    base, _ = site
    page, outside = _page_on_this_server_only(browser, base)
    page.goto(base + "/docs")
    # Swagger UI has fetched /openapi.json and drawn one block per operation.
    page.wait_for_selector(".opblock-summary-path", timeout=15_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
    assert any("/api/databases/{name}/search" in p for p in paths)
    assert outside == []
    page.close()
