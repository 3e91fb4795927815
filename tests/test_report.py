"""Reports and logs: `eval --report` opens offline in Chromium with real plots; `train --log-dir` writes CSV and TensorBoard."""

from __future__ import annotations

import csv
import io
import os

import pytest
from PIL import Image
from chromium import CHROMIUM

from dbprompt.cli import main
from dbprompt.storage import read_prompt_file

TINY = ["--model", "dbprompt-tiny", "--pretrained", "random"]
QUICK = ["--batch-size", "8", "--text-len", "2", "--visual-len", "2", "--no-progress"]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get("CI") != "true", reason="needs the Debian chromium package at /usr/bin/chromium"
)


@pytest.fixture(scope="module")
def trained(tiny_db, tmp_path_factory):
    """Two epochs with a log directory; splits big enough that the page has several example queries."""
    root = tmp_path_factory.mktemp("report")
    out, logs = root / "p.safetensors", root / "logs"
    splits = ["--val-fraction", "0.25", "--test-fraction", "0.25"]
    assert main(["train", str(tiny_db), "--out", str(out), "--epochs", "2", "--log-dir", str(logs), *TINY, *QUICK, *splits]) == 0
    return out, logs


def test_log_dir_has_each_epoch_as_csv_and_tensorboard_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, logs = trained
    history = read_prompt_file(out).extra["history"]
    with open(logs / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and "candidate" not in rows[0]
    assert rows[0]["train_loss"] == "" and all(float(r["train_loss"]) > 0 for r in rows[1:])
    assert [float(r["val_t2i_R@1"]) for r in rows] == [h["clip_benchmark/t2i_R@1"] for h in history]
    events = EventAccumulator(str(logs))
    events.Reload()
    assert {"val/t2i_R@1", "val/i2t_R@1", "val/score", "train/loss"} <= set(events.Tags()["scalars"])
    scalars = events.Scalars("val/t2i_R@1")
    assert [s.step for s in scalars] == [0, 1, 2]
    assert [s.value for s in scalars] == pytest.approx([h["clip_benchmark/t2i_R@1"] for h in history])
    assert [s.step for s in events.Scalars("train/loss")] == [1, 2]


PROMPTS_LINE, ZERO_SHOT_LINE = (0x1F, 0x77, 0xB4), (0x7F, 0x7F, 0x7F)


def _is_a_plot(data: bytes, line: tuple[int, int, int] = PROMPTS_LINE) -> None:
    """A PNG with axes and a line of this colour on it, not a blank canvas."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.width > 400 and image.height > 200
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}
    assert len(colours) > 50  # text, grid, antialiased lines
    assert line in colours


def _open_offline(browser, url: str):  # noqa: F811
    """The page in Chromium with every request off this machine aborted and listed, and its console errors."""
    page = browser.new_page()
    outside, console = [], []
    page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: console.append(str(exc)))

    def local_only(route):
        if route.request.url.startswith(("file://", "data:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(url)
    page.wait_for_load_state("load")
    return page, outside, console


@pytest.mark.slow  # a real browser
@needs_chromium
def test_eval_report_opens_offline_with_its_plots(trained, tiny_db, browser, tmp_path, capsys):  # noqa: F811
    out, _ = trained
    report = tmp_path / "report"
    assert main(["eval", str(tiny_db), "--prompts", str(out), "--report", str(report), "--json"]) == 0
    assert capsys.readouterr().out.count('"report"') == 1
    for name in ("recall.png", "validation.png"):
        _is_a_plot((report / name).read_bytes())
    page, outside, console = _open_offline(browser, (report / "index.html").as_uri())
    images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete && i.naturalWidth > 0, i.src.slice(0, 22)])")
    # Two figures and the example queries' thumbnails, all inline and all decoded.
    assert all(ok for ok, _ in images) and all(src.startswith("data:image/") for _, src in images)
    assert len(images) > 2 + 5
    # Recall@K by both definitions, and label-level metrics where some captions repeat (the tiny world's do).
    assert page.eval_on_selector_all("table", "ts => ts.map(t => t.tBodies[0].rows.length)") == [2, 2, 2]
    assert "Label-level retrieval" in page.inner_html("body")
    queries = page.eval_on_selector_all("section.query", "qs => qs.map(q => q.querySelectorAll('.row').length)")
    assert len(queries) >= 3 and set(queries) == {2}  # before and after for each
    assert "validation R@1" in page.inner_html("body")
    assert outside == [] and console == []
    page.close()


@pytest.mark.slow  # a real browser
@needs_chromium
def test_zero_shot_report_says_there_is_no_training_and_marks_saturated_k(tiny_db, browser, tmp_path, capsys):  # noqa: F811
    report = tmp_path / "report"
    # A 7-image test split: R@10 of text->image reaches every image.
    splits = ["--test-fraction", "0.2", "--val-fraction", "0.1"]
    assert main(["eval", str(tiny_db), *TINY, "--report", str(report), *splits]) == 0
    table = capsys.readouterr().out
    assert "clip_benchmark/t2i_R@10*" in table and "saturated" in table
    assert not (report / "validation.png").exists()
    _is_a_plot((report / "recall.png").read_bytes(), ZERO_SHOT_LINE)
    page, outside, console = _open_offline(browser, (report / "index.html").as_uri())
    assert "No validation history" in page.inner_text("body")
    assert page.eval_on_selector_all("td.sat", "cells => cells.length") > 0
    assert outside == [] and console == []
    page.close()


def test_report_into_a_file_is_refused(tiny_db, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("")
    assert main(["eval", str(tiny_db), *TINY, "--report", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_example_queries_are_those_that_moved_most_labelled_before_and_after(trained, tiny_db, tmp_path, capsys):
    import re

    out, _ = trained
    report = tmp_path / "report"
    assert main(["eval", str(tiny_db), "--prompts", str(out), "--report", str(report)]) == 0
    capsys.readouterr()
    page = (report / "index.html").read_text()
    shown = re.findall(r'<small class="why">(improved|worsened|worst after training): rank (\d+) → (\d+)</small>', page)
    assert 1 <= len(shown) <= 6 and len(shown) == page.count("<section class=query>")
    for why, before, after in shown:
        assert (why != "improved" or int(before) > int(after)) and (why != "worsened" or int(before) < int(after))
    worst = [int(after) for why, _, after in shown if why == "worst after training"]
    assert worst == sorted(worst, reverse=True)
