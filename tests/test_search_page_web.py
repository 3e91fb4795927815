"""The search page as a product, in real headless Chromium: the header and example queries, "More results"
past 100, the folder and tag filters, paste and drop, the viewer's Open original and Download, the weak-match hint,
and a phone-sized page that fits its screen."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from chromium import CHROMIUM
from search_fixtures import foldered_world, holiday_tags, running_server, set_weak_line

from dbprompt.runtime import Runtime
from dbprompt.server import create_app

N = 240
NONSENSE = "glorp snib wuzzle"
QUERY = "a large red circle on the left"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the Debian chromium package at /usr/bin/chromium"),
    pytest.mark.slow,  # a real browser
]


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("page-web")
    db, info = foldered_world(root, tiny_backbone, n=N, seed=6, tags=holiday_tags)
    with running_server(create_app({"photos": info.path}, runtime=Runtime())) as base:
        yield {"base": base, "db": db, "index": info.path, "api": f"{base}/api/databases/photos"}


@pytest.fixture
def page(browser, site):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(site["base"] + "/")
    page.wait_for_selector("#examples .example")
    yield page
    page.close()
    assert errors == []


def _ids(page) -> list[int]:
    return page.eval_on_selector_all("#results .result", "cards => cards.map(c => Number(c.dataset.id))")


def _status(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#status').textContent.includes(t)", arg=text, timeout=10_000)


def _search(page, query: str) -> None:
    page.fill("#query", query)
    page.press("#query", "Enter")
    _status(page, f"“{query}” in photos")


def test_the_empty_page_says_what_the_database_is_and_offers_its_captions(page, site):
    info = httpx.get(f"{site['base']}/api/databases").json()[0]
    about = page.text_content("#about")
    for fact in ("photos", f"{N} images", "dbprompt-tiny (random)", "foldered.safetensors", "trained ", "indexed "):
        assert fact in about
    assert "R@1" not in about  # random prompts: the prompt file records no training to report
    assert page.is_visible("#welcome") and f"Search {N} images in photos" in page.text_content("#welcome h1")
    examples = page.eval_on_selector_all("#examples .example", "buttons => buttons.map(b => b.textContent)")
    assert examples == info["examples"] and len(examples) >= 3
    page.click("#examples .example >> nth=1")
    _status(page, f"“{examples[1]}” in photos")
    assert page.input_value("#query") == examples[1] and not page.is_visible("#welcome")


def test_more_results_pages_past_100_without_repeats(page, site):
    page.select_option("#k", "100")
    _search(page, QUERY)
    pages = [[r["id"] for r in httpx.get(f"{site['api']}/search", params={"q": QUERY, "k": 100, "offset": o}).json()["results"]] for o in (0, 100, 200)]
    assert _ids(page) == pages[0]
    page.click("#more")
    page.wait_for_function("() => document.querySelectorAll('#results .result').length === 200")
    page.click("#more")
    page.wait_for_function(f"() => document.querySelectorAll('#results .result').length === {N}")
    ids = _ids(page)
    assert ids == pages[0] + pages[1] + pages[2] and len(set(ids)) == N
    assert not page.is_visible("#more")  # the last page was short: nothing more
    assert page.text_content("#status").startswith(f"{N} results for")
    page.click(f"#results .result >> nth={N - 1}")  # the viewer walks the appended pages too
    page.wait_for_function("() => document.querySelector('#viewer').open")
    assert page.text_content("#viewer-position") == f"{N} / {N}"


def test_the_folder_filter_narrows_text_and_image_searches(page, site):
    assert page.is_visible("#folder-pick")
    options = page.eval_on_selector_all("#folder option", "os => os.map(o => o.textContent)")
    assert options == ["All folders", f"a · {N // 4}", f"b · {N - N // 4}"]
    _search(page, QUERY)
    page.select_option("#folder", "f:a")
    _status(page, "in photos / a (")
    expected = httpx.get(f"{site['api']}/search", params={"q": QUERY, "k": 20, "folder": "a"}).json()["results"]
    assert _ids(page) == [r["id"] for r in expected] and all(r["key"].startswith("a/") for r in expected)
    page.click("#results .result >> nth=0 >> .more-like")  # an image search keeps the folder
    _status(page, "images like a/")
    keys = page.eval_on_selector_all("#results .result", "cards => cards.map(c => c.dataset.key)")
    assert len(keys) == 20 and all(key.startswith("a/") for key in keys)


def test_the_tag_filter_narrows_searches_and_goes_with_the_folder_s(page, site):
    assert page.is_visible("#tag-pick")
    options = page.eval_on_selector_all("#tag option", "os => os.map(o => o.textContent)")
    assert options == ["All tags", f"beach · {N // 2}", f"city · {N // 2}", f"family · {N // 3}", f"sunset · {N // 5}"]
    _search(page, QUERY)
    page.select_option("#tag", "t:sunset")
    _status(page, "in photos tagged sunset (")
    expected = httpx.get(f"{site['api']}/search", params={"q": QUERY, "k": 20, "tag": "sunset"}).json()["results"]
    assert _ids(page) == [r["id"] for r in expected] and all("sunset" in r["tags"] for r in expected)
    page.select_option("#folder", "f:a")  # both filters: 12 images of folder a are tagged sunset
    _status(page, "12 results for “a large red circle on the left” in photos / a tagged sunset (")
    both = httpx.get(f"{site['api']}/search", params={"q": QUERY, "k": 20, "tag": "sunset", "folder": "a"}).json()["results"]
    assert _ids(page) == [r["id"] for r in both] and len(both) == 12
    page.click("#results .result >> nth=0 >> .more-like")  # an image search keeps them
    _status(page, "images like a/")
    keys = page.eval_on_selector_all("#results .result", "cards => cards.map(c => c.dataset.key)")
    assert len(keys) == 12 and all(key.startswith("a/") and int(key[2:8]) % 5 == 0 for key in keys)


def _png_file_js(site) -> str:
    data = base64.b64encode((Path(site["db"]) / "b" / "000001.png").read_bytes()).decode()
    return f"new File([Uint8Array.from(atob('{data}'), c => c.charCodeAt(0))], 'holiday.png', {{type: 'image/png'}})"


def test_an_image_pasted_or_dropped_searches_by_it(page, site):
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    page.evaluate(f"""() => {{
        const data = new DataTransfer(); data.items.add({_png_file_js(site)});
        document.dispatchEvent(new ClipboardEvent('paste', {{clipboardData: data, bubbles: true}}));
    }}""")
    _status(page, "results for holiday.png in photos")
    assert page.is_visible("#query-image") and "holiday.png" in page.text_content("#query-image-label")
    assert len(_ids(page)) == 20 and any(url.endswith("/api/databases/photos/search/image?k=20") for url in posted)

    page.evaluate("""() => {
        const data = new DataTransfer(); data.items.add(new File(['x'], 'notes.txt', {type: 'text/plain'}));
        document.dispatchEvent(new DragEvent('dragenter', {dataTransfer: data, bubbles: true}));
    }""")
    assert page.is_visible("#drop-zone")
    page.evaluate(f"""() => {{
        const data = new DataTransfer(); data.items.add({_png_file_js(site)});
        document.dispatchEvent(new DragEvent('drop', {{dataTransfer: data, bubbles: true, cancelable: true}}));
    }}""")
    page.wait_for_function("() => document.querySelector('#drop-zone').hidden")
    _status(page, "results for holiday.png in photos")
    assert len(posted) == 2


def test_the_viewer_opens_and_downloads_the_original(page, site, tmp_path):
    _search(page, QUERY)
    page.click("#results .result >> nth=0")
    page.wait_for_function("() => document.querySelector('#viewer').open")
    key = page.text_content("#viewer-key")
    image_id = _ids(page)[0]
    assert page.get_attribute("#viewer-open", "href") == f"api/databases/photos/images/{image_id}"
    assert page.get_attribute("#viewer-open", "target") == "_blank"
    with page.expect_download() as download:
        page.click("#viewer-download")
    saved = tmp_path / "saved.png"
    download.value.save_as(saved)
    assert download.value.suggested_filename == Path(key).name
    assert saved.read_bytes() == (Path(site["db"]) / key).read_bytes()
    with page.expect_popup() as popup:
        page.click("#viewer-open")
    assert popup.value.url.endswith(f"/api/databases/photos/images/{image_id}")
    popup.value.close()


def test_the_weak_match_hint_fires_under_the_index_s_line_only(page, site):
    def best(q: str) -> float:
        return httpx.get(f"{site['api']}/search", params={"q": q, "k": 1}).json()["results"][0]["score"]

    scores = {q: best(q) for q in (NONSENSE, QUERY)}
    low, high = sorted(scores, key=scores.get)
    assert scores[low] < scores[high]
    set_weak_line(site["index"], (scores[low] + scores[high]) / 2)  # the tiny random backbone: drawn between them
    try:
        page.reload()
        page.wait_for_selector("#examples .example")
        _search(page, low)
        assert page.is_visible("#hint") and "Weak match" in page.text_content("#hint")
        assert "measured for this database" in page.text_content("#hint")
        _search(page, high)
        assert not page.is_visible("#hint")
    finally:
        set_weak_line(site["index"], -1.0)


def test_a_phone_sized_page_fits_its_screen(browser, site):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(site["base"] + "/?q=" + QUERY.replace(" ", "+"))
    page.wait_for_selector("#results .result img")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    columns = page.evaluate("() => getComputedStyle(document.querySelector('#results')).gridTemplateColumns.split(' ').length")
    assert columns == 2
    header = page.evaluate("() => document.querySelector('.top').getBoundingClientRect().height")
    assert header < 844 / 4  # the sticky header leaves the screen to the results
    page.close()
