"""`dbprompt eval --report DIR`: one HTML page that needs nothing but itself (figures and thumbnails inline).

The page loads nothing from anywhere (its Content-Security-Policy forbids it), so it can be
mailed, archived or opened offline. The figures are also written beside it as PNG files.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from PIL import Image

from .. import __version__
from ..atomic import atomic_write_bytes, atomic_write_text
from ..data.records import Record, text_key
from ..metrics import CURVE_KS, LABEL_K, LABEL_KEYS, LABELS_SHARE, TABLE_KS
from ..pipeline import encode_texts
from ..runtime import Runtime
from . import plots

if TYPE_CHECKING:
    from ..evaluation import EvalReport
    from ..model import PromptedCLIP

EXAMPLE_QUERIES = 6
# Distinct caption texts (evenly spread) the examples are chosen among: bounds the text encoding.
SELECTION_POOL = 2000
TOP = 5
THUMBNAIL = 128
DEFINITIONS = {
    "clip_benchmark": "CLIP_benchmark: every caption is a text query; an image query hits when any of its captions does",
    "open_clip": "open_clip: 1:1 pairs, each image with its first caption",
}
SHARED_NOTE = (
    "† most captions are shared by several images (class folders, tags): a text query's other relevant images "
    "count against it, so text→image R@K says little here; see the label-level table."
)


@dataclass
class ReportInputs:
    """What eval computed, kept for the page: every model's image features of the split's readable records."""

    models: Mapping[str, "PromptedCLIP"]
    records: Sequence[Record]
    features: Mapping[str, torch.Tensor]
    curves: Mapping[str, Mapping[str, float]]
    runtime: Runtime
    training: Mapping | None = None


def write_report(out_dir: str | Path, report: "EvalReport", inputs: ReportInputs) -> Path:
    """Write DIR/index.html (self-contained), DIR/recall.png and, with a training history, DIR/validation.png."""
    out = Path(out_dir)
    captions = [len(r.captions) for r in inputs.records]
    galleries = {"t2i": len(captions), "i2t": sum(captions)}
    figures = {"recall.png": plots.recall_curves(inputs.curves, CURVE_KS, galleries)}
    history = (inputs.training or {}).get("history") or []
    if any(h.get("clip_benchmark/t2i_R@1") is not None for h in history):
        figures["validation.png"] = plots.validation_curve(history, inputs.training.get("best_epoch"))
    for name, data in figures.items():
        atomic_write_bytes(out / name, data)
    page = out / "index.html"
    atomic_write_text(page, _page(report, inputs, figures))
    return page


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _thumbnail(path: Path) -> str:
    """A small inline JPEG, or an empty string for an image that will not open (the page says so)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL, THUMBNAIL))
            if max(im.size) < THUMBNAIL:  # tiny images: whole pixels, not a blur
                factor = THUMBNAIL // max(im.size)
                im = im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)
            buffer = io.BytesIO()
            im.save(buffer, "JPEG", quality=85)
    except (OSError, Image.DecompressionBombError):
        return ""
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _shared(report: "EvalReport") -> bool:
    """Whether most queries share their text with other images (as `dbprompt eval` marks its table)."""
    return min(m.get("label/shared", 0.0) for m in report.rows.values()) >= LABELS_SHARE


def _table(report: "EvalReport", prefix: str) -> str:
    shared = _shared(report)
    head = "".join(f"<th>{d} R@{k}{'†' if shared and d == 'text→image' else ''}</th>" for d in ("text→image", "image→text") for k in TABLE_KS)
    body = []
    for name, metrics in report.rows.items():
        cells = []
        for direction in ("t2i", "i2t"):
            for k in TABLE_KS:
                key = f"{prefix}/{direction}_R@{k}"
                mark = key in report.saturated
                cells.append(f"<td{' class=sat' if mark else ''}>{metrics[key]:.1f}{'*' if mark else ''}</td>")
        body.append(f"<tr><th scope=row>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return (
        f"<div class=wide><table><caption>{html.escape(DEFINITIONS[prefix])}</caption>"
        f"<thead><tr><th>method</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _label_table(report: "EvalReport") -> str:
    """mAP, MAP@R and P@K per distinct query text, where captions repeat; empty where they do not."""
    if not all("label/t2i_mAP" in m for m in report.rows.values()):
        return ""
    names = {"label/t2i_mAP": "mAP", "label/t2i_mAP@R": "MAP@R", f"label/t2i_P@{LABEL_K}": f"precision@{LABEL_K}"}
    head = "".join(f"<th>{names[k]}</th>" for k in LABEL_KEYS)
    body = "".join(
        f"<tr><th scope=row>{html.escape(name)}</th>{''.join(f'<td>{m[k]:.1f}</td>' for k in LABEL_KEYS)}</tr>" for name, m in report.rows.items()
    )
    return (
        "<h2>Label-level retrieval (%)</h2><div class=wide><table><caption>Each distinct caption text (a class folder's, a tag's) "
        "is one query; every image with that text is relevant to it.</caption>"
        f"<thead><tr><th>method</th>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _spread(items: Sequence[str], n: int) -> list[str]:
    n = min(n, len(items))
    return [items[i * len(items) // n] for i in range(n)]


def _first_relevant_ranks(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Per query, the rank of its best-scored relevant image (ties against it)."""
    best = scores.masked_fill(~relevant, float("-inf")).max(dim=1).values
    return 1 + (scores > best[:, None]).sum(dim=1)


def _picks(before: torch.Tensor, after: torch.Tensor) -> list[tuple[int, str]]:
    """Which queries to show, by their first relevant image's rank before and after training: those that
    moved most (up, then down), then those still ranked worst; each with why."""
    gain = (before - after).tolist()
    order = sorted(range(len(gain)), key=lambda i: -gain[i])
    picks = [(i, "improved") for i in order[:2] if gain[i] > 0] + [(i, "worsened") for i in order[::-1][:2] if gain[i] < 0]
    chosen = {i for i, _ in picks}
    worst = [i for i in sorted(range(len(gain)), key=lambda i: -int(after[i])) if i not in chosen]
    picks += [(i, "worst after training") for i in worst[: EXAMPLE_QUERIES - len(picks)]]
    return [(i, f"{why}: rank {int(before[i])} → {int(after[i])}") for i, why in picks]


def _examples(inputs: ReportInputs) -> str:
    """A few test captions as queries: each method's top images, those that have the query's text outlined.
    With a prompt file they are chosen by how their ranks moved (`_picks`); without, evenly spread."""
    records = list(inputs.records)
    keys = [{text_key(c) for c in r.captions} for r in records]
    distinct = list({text_key(c): c for r in records for c in r.captions}.values())
    compared = len(inputs.models) >= 2
    queries = _spread(distinct, SELECTION_POOL if compared else EXAMPLE_QUERIES)
    relevant = torch.tensor([[text_key(q) in k for k in keys] for q in queries])
    scores = {
        name: encode_texts(model, queries, inputs.runtime) @ inputs.features[name][: len(records)].T
        for name, model in inputs.models.items()
    }
    ranks = {name: _first_relevant_ranks(s, relevant) for name, s in scores.items()}
    before, after = list(ranks.values())[:2] if compared else (None, None)
    chosen = _picks(before, after) if compared else [(q, "") for q in range(len(queries))]
    thumbs: dict[int, str] = {}
    blocks = []
    for q, why in chosen:
        rows = []
        for name, s in scores.items():
            top = torch.topk(s[q], min(TOP, len(records))).indices.tolist()
            cells = []
            for i in top:
                if i not in thumbs:
                    thumbs[i] = _thumbnail(records[i].path)
                alt = html.escape(records[i].captions[0], quote=True)
                image = f'<img src="{thumbs[i]}" alt="{alt}" title="{alt}">' if thumbs[i] else '<span class="missing">unreadable</span>'
                cells.append(f'<li class="{"hit" if relevant[q, i] else ""}">{image}<span>{s[q, i]:.3f}</span></li>')
            rows.append(
                f'<div class="row"><p class="label">{html.escape(name)}<br><small>first image with this text: rank {int(ranks[name][q])}</small></p>'
                f'<ol>{"".join(cells)}</ol></div>'
            )
        label = f' <small class="why">{html.escape(why)}</small>' if why else ""
        blocks.append(f"<section class=query><h3>“{html.escape(queries[q])}”{label}</h3>{''.join(rows)}</section>")
    return "".join(blocks)


def _page(report: "EvalReport", inputs: ReportInputs, figures: Mapping[str, bytes]) -> str:
    name = Path(report.database).name or report.database
    warnings = [*report.warnings]
    if _shared(report):
        warnings.append(SHARED_NOTE)
    if report.saturated:
        warnings.append("* saturated: K reaches every image (or caption) the query ranks, so every query hits; these numbers say nothing about the model.")
    notes = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    recall = _data_uri(figures["recall.png"], "image/png")
    if "validation.png" in figures:
        training = (
            f'<figure><img src="{_data_uri(figures["validation.png"], "image/png")}" alt="validation R@1 and training loss per epoch">'
            "<figcaption>Validation R@1 (and mAP, where captions repeat) after each epoch (epoch 0: before training), as "
            "recorded in the prompt file; training keeps the epoch marked. Right: the mean contrastive loss of each epoch.</figcaption></figure>"
        )
    else:
        training = "<p>No validation history: evaluated without a prompt file, or the file records none.</p>"
    created = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<link rel="icon" href="data:,">
<title>dbprompt report: {html.escape(name)}</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>Retrieval report: {html.escape(name)}</h1>
<p class="meta">{html.escape(report.split)} split of <code>{html.escape(report.database)}</code>: {report.images:,} images, {report.captions:,} captions;
backbone {html.escape(report.backbone)} [{html.escape(str(report.pretrained))}]; splits made {html.escape(report.how)}.</p>
</header>
{f'<ul class="warnings">{notes}</ul>' if notes else ''}
<h2>Recall@K (%)</h2>
{_table(report, "clip_benchmark")}
{_table(report, "open_clip")}
{_label_table(report)}
<figure><img src="{recall}" alt="recall@K curves, text to image and image to text, zero-shot and prompts">
<figcaption>Recall@K for every K up to the gallery's size (CLIP_benchmark definition): the share of queries whose own image (caption) is among the first K.</figcaption></figure>
<h2>Training</h2>
{training}
<h2>Example queries</h2>
<p>Captions of {html.escape(report.split)} images used as text queries: each method's top {TOP} images with their scores; images that have the query's text are outlined.
With a prompt file they are the queries whose first relevant image moved most, up and down, and those still
ranked worst after training (its rank before → after).</p>
{_examples(inputs)}
<footer>Made by dbprompt {__version__} on {created}.</footer>
</body>
</html>
"""


STYLE = """
:root { font-family: system-ui, sans-serif; color: #222; background: #fafaf8; }
body { max-width: 1000px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; } h3 { font-size: 0.95rem; font-weight: 600; }
.meta { color: #555; } code { font-size: 0.9em; }
.warnings { background: #fff4e5; border: 1px solid #f0c36d; border-radius: 6px; padding: 0.6rem 1.6rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: #555; font-size: 0.85rem; padding-bottom: 0.3rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }
th[scope=row], thead th:first-child { text-align: left; min-width: 9rem; }
thead th { font-size: 0.8rem; }
.wide { overflow-x: auto; max-width: 100%; }
td.sat { color: #999; }
figure { margin: 1rem 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.85rem; }
.query { border-top: 1px solid #e3e3e3; padding-top: 0.3rem; }
.why { font-weight: normal; color: #666; margin-left: 0.5rem; }
.row { display: flex; align-items: center; gap: 0.8rem; }
.label { width: 13rem; flex: none; font-size: 0.85rem; margin: 0.3rem 0; overflow-wrap: anywhere; }
.row ol { display: flex; gap: 0.4rem; list-style: none; padding: 0; margin: 0.3rem 0; }
.row li { display: flex; flex-direction: column; align-items: center; font-size: 0.75rem; color: #666; border: 3px solid transparent; border-radius: 4px; }
.row li.hit { border-color: #2ca02c; }
.row img { width: 96px; height: 96px; object-fit: contain; background: #eee; }
.missing { width: 96px; height: 96px; display: grid; place-items: center; background: #eee; }
footer { margin-top: 2rem; color: #888; font-size: 0.8rem; }
"""
