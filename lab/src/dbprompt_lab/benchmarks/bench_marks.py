"""The loop a user runs (issue 25): search, mark, train from the marks, re-index, search again.

A simulated user on a class-folder collection (bench_labels' world): each round asks one query a
class ("a photo of a star"), marks the top `--top` results through the HTTP API by ground truth
(the folder), then `train --feedback` and `index --force`. Held-out class-level mAP and P@10
after each round (round 0: zero-shot), for marks alone (no captions, no template), captions alone
(the template's class texts, no marks) and both. Prints a Markdown table and writes a PNG. The
folders are drawn in the look of the model's world: `--model dbprompt-proxy-b` the broad world's at
96 px, in OUT/broad.

    python -m dbprompt_lab.benchmarks.bench_marks [--model M] [--rounds 3] [--top 20] [--out runs/marks]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import dbprompt
from dbprompt.atomic import atomic_write_bytes, atomic_write_text
from dbprompt.runtime import Runtime
from dbprompt.server import create_app
from dbprompt_lab import proxy
from dbprompt_lab.bench import home
from dbprompt_lab.benchmarks.bench_labels import TEMPLATE
from dbprompt_lab.world.folders import CLASSES, class_folders_once

MODES = ("marks", "captions", "both")
KEYS = ("label/t2i_mAP", "label/t2i_P@10")


def held_out(prompts: Path | None, held: Path, args: argparse.Namespace) -> dict[str, float]:
    """Class-level mAP and P@10 on the held-out folders (zero-shot without a prompt file)."""
    kw = {"model": args.model, "pretrained": args.pretrained} if prompts is None else {}
    report = dbprompt.evaluate(held, prompts, split="all", caption_template=TEMPLATE, log=lambda _: None, **kw)
    row = list(report.rows.values())[-1]
    return {k: row[k] for k in KEYS}


def mark_round(index: Path, classes: tuple[str, ...], top: int) -> int:
    """One query a class, its top results marked by their folder, through the search server's API."""
    client = TestClient(create_app([index], runtime=Runtime(), feedback=True))
    name = client.get("/api/databases").json()[0]["name"]
    for kind in classes:
        query = TEMPLATE.format(kind)
        hits = client.get(f"/api/databases/{name}/search", params={"q": query, "k": top}).json()["results"]
        for hit in hits:
            mark = {"query": query, "image_id": hit["id"], "relevant": hit["key"].split("/")[0] == kind}
            response = client.post(f"/api/databases/{name}/feedback", json=mark)
            while response.status_code == 429:  # faster than a person marks: wait as the server asks
                time.sleep(float(response.headers["Retry-After"]))
                response = client.post(f"/api/databases/{name}/feedback", json=mark)
            response.raise_for_status()
    return client.get(f"/api/databases/{name}/feedback").json()["count"]


def run_mode(mode: str, train: Path, held: Path, work: Path, args: argparse.Namespace, classes: tuple[str, ...]) -> list[dict]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    index = work / "photos.index"
    template = {"caption_template": TEMPLATE} if mode != "marks" else {}
    backbone = {"model": args.model, "pretrained": args.pretrained}
    dbprompt.build_index(train, None, index, progress=False, log=lambda _: None, **backbone, **template)
    rows = [{"mode": mode, "round": 0, "marks": 0, **held_out(None, held, args)}]
    for round_ in range(1, args.rounds + 1):
        marks = mark_round(index, classes, args.top) if mode != "captions" else 0
        prompts = work / f"round{round_}.safetensors"
        feedback = {"feedback": index} if mode != "captions" else {}
        dbprompt.train(train, prompts, epochs=args.epochs, seed=round_, progress=False, log=lambda _: None, **backbone, **template, **feedback)
        dbprompt.build_index(train, prompts, index, force=True, progress=False, log=lambda _: None, **template)
        rows.append({"mode": mode, "round": round_, "marks": marks, **held_out(prompts, held, args)})
        print(f"| {mode} | {round_} | {marks} | {rows[-1][KEYS[0]]:.1f} | {rows[-1][KEYS[1]]:.1f} |", flush=True)
        if mode == "captions":
            break  # captions do not grow with rounds
    return rows


def plot(rows: list[dict]) -> bytes:
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    ax = figure.subplots()
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        ax.plot([r["round"] for r in mine], [r[KEYS[0]] for r in mine], marker="o", label=mode)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (0 = zero-shot)")
    ax.set_ylabel("held-out class mAP (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=None, help="(default: dbprompt train's: 10, more for a small database)")
    ap.add_argument("--shifted", action="store_true", help="the visual shift (textured backgrounds, rotation, blur)")
    ap.add_argument("--held-per-class", type=int, default=100)
    ap.add_argument("--model", default=proxy.NAME, help="(default: %(default)s; dbprompt-proxy-b: the broad world's look)")
    ap.add_argument("--pretrained", type=proxy.plain_weights_file, default=None, help="the model's weights: a weights file or 'random' (default: those shipped)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--out", default="runs/marks", help="data, work and results; another world's in OUT/WORLD (default: %(default)s)")
    args = ap.parse_args()
    proxy.needs_weights(args.model, args.pretrained)
    torch.set_num_threads(1)
    world, image_size = proxy.measured_on(args.model)
    out = home(args.out, world)
    look = "shifted" if args.shifted else "source"
    # Data by its settings: another --per-class is another collection, never the last run's reused.
    drawn = {"shifted": args.shifted, "world": world, "image_size": image_size}
    train = class_folders_once(out / "data", args.per_class, seed=0, **drawn)
    held = class_folders_once(out / "data", args.held_per_class, seed=2, **drawn)
    print(f"| mode | round | marks | held-out mAP | held-out P@10 |  ({look}, {args.per_class} images a class, top {args.top})")
    print("|---|---|---|---|---|")
    rows = [row for mode in args.modes for row in run_mode(mode, train, held, out / "work" / mode, args, CLASSES)]
    atomic_write_text(out / f"{look}.json", json.dumps(rows, indent=1))
    atomic_write_bytes(out / f"{look}.png", plot(rows))


if __name__ == "__main__":
    main()
