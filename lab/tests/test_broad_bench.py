"""The benchmarks on the second proxy: the comparison on the broad world's shifts at 96 px and the class folders in
its look, each kept apart on disk from the first proxy's, whose config, paths and table markers stay as they were."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from dbprompt.backbones import RANDOM, load_backbone
from dbprompt.data import load_database
from dbprompt_lab import cli, proxy
from dbprompt_lab.bench import DATA_SEED, BenchConfig, _needed_gain, for_model, home, run
from dbprompt_lab.benchmarks import bench_labels, bench_marks
from dbprompt_lab.world import sample
from dbprompt_lab.world.broad import scene as broad_scene
from dbprompt_lab.world.folders import CLASSES, broad_class_scene, class_folders_once, write_class_folders

B = "dbprompt-proxy-b"


def test_the_first_proxy_s_comparison_is_configured_and_stored_as_before(tmp_path):
    # Today's defaults, field by field (`world` is new, and names the world they always drew from).
    assert asdict(BenchConfig()) == {
        "model": "dbprompt-proxy", "pretrained": None, "shifts": ("visual", "textual", "both"), "sizes": (500, 2000),
        "pool": 2000, "seeds": (0, 1), "methods": BenchConfig().methods, "val_images": 300, "test_images": 1000,
        "epochs": {500: 10, 2000: 3}, "batch_size": 64, "image_size": 64, "device": "auto", "bf16": None, "world": "proxy",
    }
    assert for_model("dbprompt-proxy") == BenchConfig() and for_model("dbprompt-tiny").world == "proxy"
    assert home(tmp_path, "proxy") == tmp_path and cli.markers("dbprompt-proxy") == ("<!-- methods:start -->", "<!-- methods:end -->")
    # The proxy world's data and runs where a resumed comparison looks for them, nothing else.
    cfg = BenchConfig(model="dbprompt-tiny", shifts=("visual",), sizes=(4,), pool=4, seeds=(0,), methods=("zero-shot",),
                      val_images=4, test_images=4, epochs={4: 1}, image_size=16)
    run(cfg, tmp_path, log=lambda _: None)
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "images"}
    assert files == {f"data/visual-{s}/metadata.jsonl" for s in ("train", "val", "test")} | {"runs/visual-4-0-zero-shot.json", "results.json"}
    first = load_database(tmp_path / "data" / "visual-test").records[0]
    assert first.captions == tuple(sample(0, domain="visual", seed=DATA_SEED + 2, image_size=16).captions)


def test_the_second_proxy_is_measured_on_its_own_world():
    cfg = for_model(B)
    assert (cfg.world, cfg.image_size) == ("broad", 96)
    assert cfg.shifts == ("visual", "textual", "both", "grammar", "texture")
    assert for_model(B, shifts=("grammar",)).shifts == ("grammar",)
    args = cli.build_parser().parse_args(["bench", "methods", "--model", B])
    assert args.shifts is None and args.out == "runs/methods"
    # Issue 28's bar on every shift of the broad world; the first proxy's as it was.
    assert [_needed_gain(s, n, "broad") for s in ("textual", "visual") for n in (500, 2000)] == [0.4, 0.6, 0.4, 0.6]
    assert [_needed_gain(s, n) for s in ("textual", "visual") for n in (500, 2000)] == [0.6, 0.8, 0.4, 0.6]


@pytest.mark.skipif(proxy.PROXIES[B].weights.exists(), reason="dbprompt-proxy-b's weights ship now")
def test_bench_methods_refuses_an_untrained_proxy_unless_told(tmp_path, capsys):
    assert cli.main(["bench", "methods", "--model", B, "--out", str(tmp_path)]) == 2
    assert "--pretrained random" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_bench_methods_on_the_second_proxy_runs_and_writes_its_own_table(tmp_path, one_thread):
    out, md = tmp_path / "methods", tmp_path / "B.md"
    md.write_text("# Benchmarks\n\n<!-- methods:start -->\nthe first proxy's table\n<!-- methods:end -->\n")
    common = ["bench", "methods", "--model", B, "--pretrained", RANDOM, "--shifts", "grammar", "--sizes", "4", "--epochs", "4:1",
              "--seeds", "0", "--methods", "zero-shot", "dbprompt", "--val-images", "4", "--test-images", "4", "--out", str(out)]
    assert cli.main(common + ["--jobs", "1"]) == 0
    runs = sorted(p.name for p in (out / "broad" / "runs").iterdir())
    assert runs == ["grammar-4-0-dbprompt.json", "grammar-4-0-zero-shot.json"] and not (out / "runs").exists()
    row = json.loads((out / "broad" / "runs" / "grammar-4-0-dbprompt.json").read_text())
    assert row["backbone"] == load_backbone(B, RANDOM).fingerprint() and row["best_epoch"] in (0, 1)
    # The targets: the broad world's grammar shift at the proxy's 96 px.
    test = load_database(out / "broad" / "data" / "grammar-test").records
    expected = sample(0, domain="grammar", seed=DATA_SEED + 2, image_size=96, world="broad")
    assert test[0].captions == tuple(expected.captions) and Image.open(test[0].path).size == (96, 96)
    assert cli.main(common + ["--report-only", "--benchmarks-md", str(md)]) == 0
    text = md.read_text()
    assert "<!-- methods:start -->\nthe first proxy's table\n<!-- methods:end -->\n" in text
    own = text[text.index(f"<!-- methods:{B}:start -->"):text.index(f"<!-- methods:{B}:end -->")]
    assert "| grammar | 4 | zero-shot | 1 |" in own and "| grammar | 4 | dbprompt | 1 |" in own


def test_broad_class_folders_are_drawn_in_its_look_deterministically(tmp_path):
    a = write_class_folders(tmp_path / "a", 2, seed=3, world="broad", image_size=96)
    again = write_class_folders(tmp_path / "b", 2, seed=3, world="broad", image_size=96)
    other = write_class_folders(tmp_path / "c", 2, seed=4, world="broad", image_size=96)
    first = write_class_folders(tmp_path / "d", 2, seed=3, image_size=96)  # the proxy world's, same seed
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert names == [f"{c}/{i:04d}.png" for c in sorted(CLASSES) for i in range(2)] and len(CLASSES) >= 6
    assert all((a / n).read_bytes() == (again / n).read_bytes() for n in names)
    assert all((a / n).read_bytes() != (o / n).read_bytes() for n in names for o in (other, first))
    assert Image.open(a / names[0]).size == (96, 96)
    assert write_class_folders(tmp_path / "e", 1, classes=("hexagon",), world="broad").exists()
    with pytest.raises(ValueError, match="hexagon"):
        write_class_folders(tmp_path / "f", 1, classes=("hexagon",))
    scenes = [broad_class_scene("star", np.random.default_rng(i), 0.3, ("striped",)) for i in range(300)]
    assert all(s.shapes[0].kind == "star" and s.pattern == "striped" for s in scenes)
    assert all(o.kind != "star" and o.size == "small" for s in scenes for o in s.shapes[1:])
    assert {s.shapes[0].style for s in scenes} == set(broad_scene.STYLES) and {s.shapes[0].size for s in scenes} == set(broad_scene.SIZES)
    assert 60 < sum(len(s.shapes) == 2 for s in scenes) < 120
    # Written once per setting, apart from the proxy world's.
    once = class_folders_once(tmp_path / "data", 1, seed=0, shifted=True, world="broad", image_size=96)
    assert once.name == "broad-96px-shifted-1-seed0" and class_folders_once(tmp_path / "data", 1, seed=0, shifted=True).name == "shifted-1-seed0"


def test_bench_labels_and_marks_draw_the_second_proxy_s_folders_apart(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(bench_labels, "SPLITS", {"train": (0, None), "val": (1, 2), "test": (2, 2)})
    argv = ["bench_labels", "--worlds", "source", "--methods", "zero-shot", "--per-class", "2", "--epochs", "1",
            "--model", B, "--pretrained", RANDOM, "--out", str(tmp_path / "labels")]
    monkeypatch.setattr(sys, "argv", argv)
    bench_labels.main()
    assert "| source | zero-shot |" in capsys.readouterr().out
    labels = tmp_path / "labels" / "broad"
    assert sorted(p.name for p in (labels / "data").iterdir()) == [f"broad-96px-source-2-seed{s}" for s in (0, 1, 2)]
    assert [p.name for p in (labels / "runs").iterdir()] == ["source-2-1-0-zero-shot.json"]
    assert Image.open(labels / "data" / "broad-96px-source-2-seed2" / "star" / "0001.png").size == (96, 96)
    argv = ["bench_marks", "--rounds", "1", "--per-class", "2", "--held-per-class", "2", "--epochs", "1", "--top", "3",
            "--modes", "marks", "--model", B, "--pretrained", RANDOM, "--out", str(tmp_path / "marks")]
    monkeypatch.setattr(sys, "argv", argv)
    bench_marks.main()
    rows = json.loads((tmp_path / "marks" / "broad" / "source.json").read_text())
    assert [(r["mode"], r["round"], r["marks"]) for r in rows] == [("marks", 0, 0), ("marks", 1, len(CLASSES) * 3)]
    assert sorted(p.name for p in (tmp_path / "marks" / "broad" / "data").iterdir()) == ["broad-96px-source-2-seed0", "broad-96px-source-2-seed2"]
