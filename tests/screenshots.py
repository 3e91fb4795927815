"""Screenshots of the search page at a desktop and a phone size: `python tests/screenshots.py [OUT_DIR]`.

Serves a tiny index (tests/tinydata.py shapes in two folders, tagged, random prompts) and saves the empty page,
results, the viewer and a weak match as PNGs (default: shots/), for a person to look at. The tiny random
backbone's scores mean nothing, so its weak-match line is drawn where each screenshot needs it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from chromium import CHROMIUM, launched
from search_fixtures import foldered_world, holiday_tags, running_server, set_weak_line

from dbprompt.backbones import load_backbone
from dbprompt.runtime import Runtime
from dbprompt.server import create_app

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def shoot(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        foldered_world(Path(tmp), load_backbone("dbprompt-tiny"), n=160, seed=5, image_size=160, tags=holiday_tags)
        set_weak_line(Path(tmp) / "foldered", -1.0)
        app = create_app({"holiday-photos": Path(tmp) / "foldered"}, runtime=Runtime())
        with running_server(app) as base, launched() as browser:
            for size, (width, height) in SIZES.items():
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(base + "/")
                page.wait_for_selector("#examples .example")
                saved.append(_save(page, out / f"{size}-empty.png"))
                page.click("#examples .example >> nth=0")
                page.wait_for_selector("#results .result img")
                page.wait_for_load_state("networkidle")
                saved.append(_save(page, out / f"{size}-results.png"))
                page.click("#results .result >> nth=1")
                page.wait_for_function("() => document.querySelector('#viewer-image').complete")
                saved.append(_save(page, out / f"{size}-viewer.png"))
                page.keyboard.press("Escape")
                set_weak_line(Path(tmp) / "foldered", 1.0)
                page.fill("#query", "quarterly tax invoice pdf")
                page.press("#query", "Enter")
                page.wait_for_selector("#hint:not([hidden])")
                page.wait_for_load_state("networkidle")
                saved.append(_save(page, out / f"{size}-weak.png"))
                set_weak_line(Path(tmp) / "foldered", -1.0)
                page.close()
    return saved


def _save(page, path: Path) -> Path:
    page.wait_for_timeout(300)  # transitions settle
    page.screenshot(path=str(path))
    return path


if __name__ == "__main__":
    if not CHROMIUM.exists():
        sys.exit(f"needs chromium at {CHROMIUM}")
    for path in shoot(Path(sys.argv[1] if len(sys.argv) > 1 else "shots")):
        print(path)
