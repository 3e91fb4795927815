"""The search page in real headless Chromium: type a query, see images from the chosen database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from search_fixtures import indexed_world, running_server

from dbprompt.data import load_database
from dbprompt.runtime import Runtime
from dbprompt.server import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get("CI") != "true",
    reason="needs the Debian chromium package at /usr/bin/chromium (`apt-get install chromium`); required when CI=true",
)


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


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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


def test_typing_a_query_shows_images_of_the_selected_database(site, browser):
    base, captions = site
    page, outside = _page_on_this_server_only(browser, base)
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.goto(base + "/")
    page.wait_for_function("() => document.querySelectorAll('#database option').length === 2", timeout=10_000)

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
    page.fill("#query", "x" * 600)
    assert len(page.input_value("#query")) == 500  # the page keeps queries within the server's limit
    assert outside == [] and console_errors == []
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
