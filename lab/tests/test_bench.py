"""The method comparison runs every method through the same path and resumes from saved runs."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from dbprompt.backbones import load_backbone
from dbprompt.training.validation import VALIDATION_GALLERY
from dbprompt_lab.bench import (
    HEADLINE, BenchConfig, default_jobs, markdown, run, run_one, stored_prompts, summarize, target_splits, targets,
)
from dbprompt_lab.cli import write_section
from dbprompt_lab.methods import COMPARED, EXPERIMENTS, METHODS, RETIRED, build, load_experiment

SMALL = dict(
    model="dbprompt-tiny",
    shifts=("visual",),
    sizes=(12,),
    pool=12,
    seeds=(0,),
    methods=("zero-shot", "textual+visual", "dbprompt", "full", "lora", "projection"),
    val_images=6,
    test_images=8,
    epochs={12: 1},
    image_size=32,
)


def test_methods_train_exactly_what_they_claim():
    counts = {}
    captions = ["a red circle on the left", "a blue star at the top"]
    for name in ("zero-shot", "textual", "textual+visual", "dbprompt", "full", "lora", "projection"):
        model = build(METHODS[name], load_backbone("dbprompt-tiny"), captions=captions)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        counts[name] = model.trainable_parameter_count()
        if name == "lora":
            assert trainable and all("lora_" in n for n in trainable)
        if name == "dbprompt":  # the vocabulary covers the captions' word pieces
            assert len(model.prompts.vocab.ids) == len(set(model.tokenize(captions).flatten().tolist()))
        if name == "projection":
            assert trainable == {"backbone.model.text_projection", "backbone.model.visual.proj"}
    assert counts["zero-shot"] == 0
    assert counts["textual"] < counts["textual+visual"] < counts["dbprompt"] < counts["lora"] < counts["full"]
    assert counts["full"] == sum(p.numel() for p in load_backbone("dbprompt-tiny").parameters())


def test_comparison_runs_resumes_and_reports(tmp_path):
    cfg = BenchConfig(**SMALL)
    lines: list[str] = []
    rows = run(cfg, tmp_path, log=lines.append)
    assert [r["method"] for r in rows] == list(SMALL["methods"])
    # One line per finished run, counting up to the number of runs, and a time left that ends at 0.
    total = len(SMALL["methods"])
    assert [line.split(",")[0] for line in lines[:total]] == [f"[{i}/{total}" for i in range(1, total + 1)]
    assert "about 0 min left]" in lines[total - 1] and lines[total].startswith(f"{total} runs in ")
    # Each trained row says which learning rate validation kept, from those tried.
    by_method = {r["method"]: r for r in rows}
    assert by_method["full"]["lr"] in (METHODS["full"].lr, *METHODS["full"].other_lrs)
    assert "lr" not in by_method["zero-shot"]
    assert by_method["full"]["validation_gallery"] == VALIDATION_GALLERY
    # Only dbprompt's own recipe calibrates the temperature; the reference points train as published.
    assert by_method["dbprompt"]["calibrate_temperature"] and not by_method["full"]["calibrate_temperature"]
    first = json.loads((tmp_path / "results.json").read_text())["this_run"]
    assert first["runs_trained"] == len(SMALL["methods"]) and first["wall_seconds"] > 0
    saved = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert saved == sorted(f"visual-12-0-{m}.json" for m in SMALL["methods"])
    # A second run reads the saved rows instead of training again.
    full = SMALL["methods"].index("full")
    (tmp_path / "runs" / "visual-12-0-full.json").write_text(
        json.dumps(rows[full] | {"metrics": rows[full]["metrics"] | {"clip_benchmark/t2i_R@1": 99.0}})
    )
    again = run(cfg, tmp_path, log=lambda _: None)
    assert again[full]["metrics"]["clip_benchmark/t2i_R@1"] == 99.0
    summary = summarize(again, cfg)
    zero_shot = next(e for e in summary if e["method"] == "zero-shot")
    tv = next(e for e in summary if e["method"] == "textual+visual")
    expected = (tv["clip_benchmark/t2i_R@1"] - zero_shot["clip_benchmark/t2i_R@1"]) / (99.0 - zero_shot["clip_benchmark/t2i_R@1"])
    assert zero_shot["clip_benchmark/t2i_R@1"] < 99.0
    assert abs(tv["gain_vs_full"] - expected) < 1e-9
    table = markdown(summary, cfg)
    assert table.count("\n") == 1 + len(SMALL["methods"])
    assert any("textual+visual gains" in line for line in targets(summary))
    # A calibrated full fine-tuning row is a second reference, with its own ratio.
    calibrated = again[full] | {"method": "full-calibrated", "metrics": again[full]["metrics"] | {"clip_benchmark/t2i_R@1": 80.0}}
    tv2 = next(e for e in summarize(again + [calibrated], cfg) if e["method"] == "textual+visual")
    zs = zero_shot["clip_benchmark/t2i_R@1"]
    assert abs(tv2["gain_vs_full_calibrated"] - (tv["clip_benchmark/t2i_R@1"] - zs) / (80.0 - zs)) < 1e-9
    assert tv2["gain_vs_full"] == tv["gain_vs_full"] and "gain_vs_full_calibrated" not in tv
    assert any("calibrated full fine-tuning's T2I R@1 gain" in line for line in targets([tv2, zero_shot]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["rows"]) == len(SMALL["methods"]) and results["this_run"]["runs_trained"] == 0


def test_section_is_replaced_between_markers(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# Benchmarks\n\nintro\n")
    write_section(path, "table one")
    write_section(path, "table two")
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n") and "table two" in text and "table one" not in text


def test_comparison_runs_on_the_weights_it_is_given(tmp_path):
    weights = tmp_path / "other.safetensors"
    save_file(load_backbone("dbprompt-tiny", "random", seed=7).model.state_dict(), str(weights))
    rows = {}
    for label, pretrained in (("default", None), ("other", str(weights))):
        cfg = BenchConfig(**SMALL | {"pretrained": pretrained})
        data = target_splits(tmp_path, "visual", cfg)
        rows[label] = run_one(METHODS["zero-shot"], data["train"][:12], data["val"], data["test"], cfg, 12, 0)
    assert rows["other"]["backbone"] == load_backbone("dbprompt-tiny", str(weights)).fingerprint()
    assert rows["default"]["backbone"] == load_backbone("dbprompt-tiny").fingerprint() != rows["other"]["backbone"]
    assert rows["default"]["metrics"] != rows["other"]["metrics"]


def test_runs_saved_with_other_weights_are_never_mixed_in(tmp_path):
    cfg = BenchConfig(**SMALL | {"methods": ("zero-shot",)})
    (row,) = run(cfg, tmp_path, log=lambda _: None)
    saved = tmp_path / "runs" / "visual-12-0-zero-shot.json"
    saved.write_text(json.dumps(row | {"backbone": "other weights", "metrics": row["metrics"] | {"clip_benchmark/t2i_R@1": 99.0}}))
    lines: list[str] = []
    assert run(cfg, tmp_path, log=lines.append, train=False) == []  # a report leaves it out
    assert "1 saved runs were made with other weights" in lines[0] and lines[0].endswith("left out")
    (again,) = run(cfg, tmp_path, log=lines.append)  # a run trains it again
    assert again["backbone"] == row["backbone"] and again["metrics"] == row["metrics"]
    assert json.loads(saved.read_text())["backbone"] == row["backbone"]


def test_default_jobs_fill_a_cpu_and_stay_single_on_a_gpu(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert default_jobs("cpu") == 6
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert default_jobs("auto") == 1


def test_sweeps_are_data_with_the_commands_that_ran_them():
    import json

    files = sorted(EXPERIMENTS.glob("*.json"))
    assert files
    for path in files:
        data = json.loads(path.read_text())
        assert data["commands"] and data["description"]
        runnable, retired = load_experiment(path)
        for method in runnable:
            assert METHODS[method.name] == method and method.name not in COMPARED
        for name, reason in retired.items():  # what lost stays as data, with the reason it cannot run now
            assert RETIRED[name] == reason and path.name in reason and "no longer has" in reason
        # Every method a command names is one the registry knows.
        named = {w for c in data["commands"] for w in c.split() if w.startswith(("tv-", "vis-", "vocab-"))}
        assert named <= set(METHODS) | set(RETIRED), named - set(METHODS) - set(RETIRED)


def test_sweeps_of_removed_options_are_retired_by_name_and_the_literature_runs_inserted():
    from dbprompt_lab.prompts import InsertedConfig

    assert "--couple" in RETIRED["tv-deep-gated-vocab-couple"] and "--anchor" in RETIRED["tv-deep-gated-vocab-anchor8"]
    assert "--visual-readout" in RETIRED["rotf32-lr3e-3"] and "--visual-norm" in RETIRED["op-vnorm"]
    assert METHODS["tv-shallow"].prompts == InsertedConfig(text_len=8, text_depth=1, visual_len=8, visual_depth=1)
    assert isinstance(METHODS["textual"].prompts, InsertedConfig) and METHODS["textual"].prompts.visual_len == 0


def test_targets_ask_less_of_prompts_where_only_the_images_changed():
    def entry(shift, n, method, r1, **extra):
        return {"shift": shift, "n": n, "method": method, "seeds": 2, HEADLINE: r1, "trainable_params": 10} | extra

    summary = [entry(s, n, "zero-shot", 40.0) for s in ("visual", "textual") for n in (500, 2000)]
    summary += [entry(s, n, "dbprompt", 45.0, gain_vs_full_calibrated=0.5) for s in ("visual", "textual") for n in (500, 2000)]
    lines = {line.split(":")[0]: line for line in targets(summary, "dbprompt")}
    assert "(target 40 %): met" in lines["visual, N=500 (2 seeds)"]
    assert "(target 60 %): MISSED" in lines["visual, N=2000 (2 seeds)"]
    assert "(target 60 %): MISSED" in lines["textual, N=500 (2 seeds)"]


def test_float16_files_are_judged_per_method_in_whole_captions():
    """R@1 counts captions: 3 of 3,000 is a move of exactly 0.1 point (met), 4 of 3,000 is not."""

    def run_row(method, before, after):
        return {"method": method, "metrics": {HEADLINE: before}, "prompt_file_t2i_R@1": after, "prompt_file_bytes": 100}

    three, four = 100 * 3 / 3000, 100 * 4 / 3000
    line = stored_prompts([run_row("a", 55.0, 55.0 + three), run_row("b", 50.0, 50.0 - three)])
    assert "a 0.10, b 0.10" in line and "target <= 0.1: met" in line
    line = stored_prompts([run_row("a", 55.0, 55.0 + three), run_row("b", 50.0, 50.0 - four)])
    assert "b 0.13" in line and "MISSED" in line
    assert stored_prompts([{"method": "zero-shot", "metrics": {HEADLINE: 1.0}}]) is None


def test_a_size_draws_from_the_same_pool_whatever_sizes_a_command_asks_for(tmp_path):
    # `--sizes 4` alone once wrote a pool of 4 images, so its N=4 runs trained on other images than the whole
    # comparison's (sizes 4 and 12): the pool is the config's, and a pool of another size is written again.
    small = BenchConfig(**SMALL | {"sizes": (4,), "pool": 4, "epochs": {4: 1}})
    old = target_splits(tmp_path, "visual", small)["train"]
    whole = BenchConfig(**SMALL | {"sizes": (4, 12), "epochs": {4: 1, 12: 1}})
    alone = BenchConfig(**SMALL | {"sizes": (4,), "epochs": {4: 1}})
    pool = target_splits(tmp_path, "visual", alone)["train"]
    assert len(pool) == whole.pool == 12 and target_splits(tmp_path, "visual", whole)["train"] == pool
    # A bigger pool keeps the smaller one's images, in order.
    assert [r.captions for r in pool[:4]] == [r.captions for r in old]
    assert [r.path.read_bytes() for r in pool[:4]] == [r.path.read_bytes() for r in old]
    with pytest.raises(ValueError, match="exceed the pool of 12"):
        target_splits(tmp_path, "visual", BenchConfig(**SMALL | {"sizes": (16,), "epochs": {16: 1}}))


def test_runs_drawn_from_another_pool_are_never_mixed_in(tmp_path):
    cfg = BenchConfig(**SMALL | {"methods": ("zero-shot",)})
    (row,) = run(cfg, tmp_path, log=lambda _: None)
    assert row["pool"] == 12
    (tmp_path / "runs" / "visual-12-0-zero-shot.json").write_text(json.dumps(row | {"pool": 500}))
    lines: list[str] = []
    assert run(cfg, tmp_path, log=lines.append, train=False) == []
    assert "another training pool than 12 images" in lines[0]


@pytest.mark.parametrize("rung", [0.5, 1 / 3])  # stopping at an epoch's end, and inside one
def test_halving_keeps_what_validation_prefers_at_the_rung_and_continues_it_exactly(tmp_path, rung):
    import dataclasses

    import torch

    from dbprompt_lab.bench import train_best, train_subset

    cfg = BenchConfig(**SMALL | {"epochs": {12: 2}, "batch_size": 4})
    data = target_splits(tmp_path, "visual", cfg)
    train = train_subset(data["train"], 12, 0)
    halving = dataclasses.replace(METHODS["dbprompt"], lr=1e-3, other_lrs=(3e-1,), halving_rung=rung)
    model, row = train_best(halving, train, data["val"], cfg, 12, 0)
    assert set(row["halving"]) == {"0.001", "0.3"}
    kept = max((1e-3, 3e-1), key=lambda lr: row["halving"][f"{lr:g}"])
    assert row["lr"] == kept
    # The kept learning rate, resumed after the rung, trains what one run at it trains from start to end.
    straight, alone = train_best(dataclasses.replace(halving, lr=kept, other_lrs=()), train, data["val"], cfg, 12, 0)
    assert "halving" not in alone and row["history"] == alone["history"]
    trained = {n: p for n, p in straight.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters() if p.requires_grad)
