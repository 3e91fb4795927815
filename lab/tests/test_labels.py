"""Class folders of the synthetic world, and the labels and marks benchmarks at a tiny size."""

from __future__ import annotations

import json
import sys

import numpy as np

from dbprompt.data import load_database
from dbprompt_lab.benchmarks import bench_marks
from dbprompt_lab.world.folders import class_scene, write_class_folders


def test_class_folders_hold_their_class_and_read_as_its_text(tmp_path):
    root = write_class_folders(tmp_path / "a", 3, classes=("star", "heart"), seed=4)
    again = write_class_folders(tmp_path / "b", 3, classes=("star", "heart"), seed=4)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [f"{c}/{i:04d}.png" for c in ("heart", "star") for i in range(3)]
    assert all((root / p).read_bytes() == (again / p).read_bytes() for p in ("star/0001.png", "heart/0002.png"))
    records = load_database(root, caption_template="a photo of a {}").records
    assert {r.key: r.captions for r in records}["star/0000.png"] == ("a photo of a star",)
    scenes = [class_scene("star", np.random.default_rng(i), other_rate=0.5) for i in range(200)]
    assert all(s.shapes[0].kind == "star" and all(o.kind != "star" and o.size == "small" for o in s.shapes[1:]) for s in scenes)
    assert 60 < sum(len(s.shapes) == 2 for s in scenes) < 140


def test_bench_marks_runs_the_loop_through_the_server(tmp_path, monkeypatch, capsys):
    argv = ["bench_marks", "--rounds", "1", "--per-class", "4", "--held-per-class", "2", "--epochs", "1", "--top", "6",
            "--model", "dbprompt-tiny", "--pretrained", "random", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    bench_marks.main()
    rows = json.loads((tmp_path / "source.json").read_text())
    assert [(r["mode"], r["round"]) for r in rows] == [("marks", 0), ("marks", 1), ("captions", 0), ("captions", 1), ("both", 0), ("both", 1)]
    assert rows[1]["marks"] == 6 * 6 and rows[5]["marks"] == 6 * 6  # one query a class, its top 6 marked
    assert all(0 <= r["label/t2i_mAP"] <= 100 for r in rows)
    assert (tmp_path / "source.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| marks | 1 | 36 |" in capsys.readouterr().out


def test_class_folders_are_written_once_per_setting(tmp_path):
    from dbprompt_lab.world.folders import class_folders_once

    two = class_folders_once(tmp_path, 2, seed=1, shifted=False)
    stamp = (two / "star" / "0000.png").stat().st_mtime_ns
    assert class_folders_once(tmp_path, 2, seed=1, shifted=False) == two and (two / "star" / "0000.png").stat().st_mtime_ns == stamp
    three = class_folders_once(tmp_path, 3, seed=1, shifted=False)  # another size is another collection
    assert three != two and len(list(three.rglob("*.png"))) == 18 and not list(tmp_path.glob("*.tmp"))
