"""The user's day through the command line, on the tiny model and database."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbprompt.cli import build_parser, main
from dbprompt.data import SplitConfig, load_database, split_records
from dbprompt.data.splits import assign_splits
from dbprompt.prompts import PromptConfig
from dbprompt.storage import read_prompt_file

COMMANDS = ["train", "eval", "info", "index", "search", "serve", "export"]


def test_help_for_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0


def test_removed_options_are_not_offered(capsys):
    """Options that lost on validation left the product (BENCHMARKS.md, What lost)."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    removed = ["--couple", "--prompt-dropout", "--text-init", "--text-norm", "--visual-norm", "--anchor", "--visual-start",
               "--no-gate", "--visual-readout", "--readout-tokens"]
    assert [flag for flag in removed if flag in text] == []
    assert all(flag in text for flag in ("--text-len", "--visual-adapter", "--vocab", "--image-backward"))


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "dbprompt", "info", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "prompt file" in done.stdout


def test_train_eval_info(tiny_db, tmp_path, capsys):
    out = tmp_path / "shapes.safetensors"
    args = ["train", str(tiny_db), "--out", str(out), "--epochs", "2", "--batch-size", "8", "--no-progress"]
    args += ["--model", "dbprompt-tiny", "--pretrained", "random"]
    splits = ["--val-fraction", "0.3", "--test-fraction", "0.3", "--split-seed", "5"]
    assert main(args + ["--text-len", "4", "--visual-len", "2", "--keep-work"] + splits) == 0
    assert out.exists()
    # One training by default, checkpointed in the work directory (kept: --keep-work).
    assert (tmp_path / "shapes.safetensors.work" / "checkpoint.safetensors").exists()
    saved = read_prompt_file(out)
    # The calibrated temperature trains but stays out of the prompt file: it ranks nothing.
    assert saved.extra["train_config"]["calibrate_temperature"] is True
    assert not any("logit_scale" in k for k in saved.tensors)
    capsys.readouterr()
    assert main(["eval", str(tiny_db), "--prompts", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    label = "prompts (textual+visual+vocabulary+image adapters)"
    assert set(report["rows"]) == {"zero-shot", label}
    # The split recorded at training time is reused, not the default one (which differs here).
    records = load_database(tiny_db).records
    recorded = split_records(records, SplitConfig(val_fraction=0.3, test_fraction=0.3, split_seed=5))["test"]
    assert report["images"] == len(recorded) != len(split_records(records)["test"])
    vocab = read_prompt_file(out).tensors["vocab.ids"]
    assert 5 < len(vocab) <= PromptConfig().vocab  # the tiny database's caption tokens
    # every layer, a gate per layer and head of each tower, an offset per vocabulary token, and a
    # rank-16 adapter (down and up) beside each of the 2 image blocks
    adapters = 2 * 2 * 16 * 64
    assert report["rows"][label]["trainable_params"] == 2 * (4 * 64 + 2 * 64) + 2 * 2 * 2 + 64 * len(vocab) + adapters
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "dbprompt-tiny" in info and '"text_len": 4' in info


def test_train_says_when_validation_kept_zero_shot(tiny_db, tmp_path, capsys, epochs_chosen_on_tiny_validation):
    args = ["train", str(tiny_db), "--out", str(tmp_path / "p.safetensors"), "--epochs", "1", "--batch-size", "8"]
    args += ["--model", "dbprompt-tiny", "--pretrained", "random", "--no-progress", "--text-len", "2", "--visual-len", "2"]
    # A learning rate too small to change any ranking: no trained epoch beats the untrained state.
    assert main(args + ["--lr", "1e-12"]) == 0
    out, err = capsys.readouterr()
    assert "best epoch 0" in out and "no trained epoch beat zero-shot" in err
    # The note speaks of this database, not of the synthetic benchmark's shifts; with 8 validation images, of noise.
    assert "textures" not in err and "rotation" not in err and "noisy" in err


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p.safetensors"), "--model", "dbprompt-proxy"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("dbprompt train: error:") and "nowhere" in err and len(err.splitlines()) == 1
    assert main(["info", str(tmp_path / "nothing.safetensors")]) == 3
    assert "no such prompt file" in capsys.readouterr().err


def test_nothing_to_train_is_refused(tiny_db, tmp_path, capsys):
    code = main(["train", str(tiny_db), "--out", str(tmp_path / "p.safetensors"), "--model", "dbprompt-tiny", "--text-len", "0", "--visual-len", "0", "--vocab", "0", "--visual-adapter", "0"])
    assert code == 2 and "nothing to train" in capsys.readouterr().err


def test_random_weights_must_be_asked_for(tiny_db, tmp_path, capsys):
    assert main(["train", str(tiny_db), "--out", str(tmp_path / "p.safetensors"), "--model", "ViT-B-32"]) == 2
    err = capsys.readouterr().err
    assert "--pretrained" in err and "laion2b" in err


def test_parser_builds():
    assert build_parser().prog == "dbprompt"


def test_resumed_train_after_the_end_trains_nothing_again(tiny_db, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "p.safetensors"
    args = ["train", str(tiny_db), "--out", str(out), "--epochs", "2", "--batch-size", "8", "--no-progress"]
    args += ["--model", "dbprompt-tiny", "--pretrained", "random", "--text-len", "2", "--visual-len", "2", "--no-calibrate-temperature"]
    assert main(args + ["--force"]) == 0
    assert not (tmp_path / "p.safetensors.work").exists()  # a finished run leaves no checkpoint behind
    args += ["--keep-work"]
    assert main(args + ["--force"]) == 0
    first = load_file(str(out))
    assert read_prompt_file(out).extra["train_config"]["calibrate_temperature"] is False
    checkpoint = tmp_path / "p.safetensors.work" / "checkpoint.safetensors"
    stamp = checkpoint.stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0
    again = load_file(str(out))
    assert set(again) == set(first) and all(torch.equal(again[k], first[k]) for k in first)
    assert checkpoint.stat().st_mtime_ns == stamp  # a finished run is not trained again


def _with_file_splits(tiny_db, root, splits) -> "Path":
    """A copy of the tiny database whose metadata names a split per image (cycling through `splits`)."""
    db = root / "named"
    shutil.copytree(tiny_db, db)
    lines = (db / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) | {"split": splits[i % len(splits)]} for i, line in enumerate(lines)]
    (db / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return db


def test_validation_is_carved_from_train_when_the_file_names_none(tiny_db, tmp_path, capsys):
    db = _with_file_splits(tiny_db, tmp_path, ["train", "train", "train", "test"])  # 30 train, 10 test
    out = tmp_path / "p.safetensors"
    args = ["train", str(db), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--text-len", "2"]
    assert main(args + ["--model", "dbprompt-tiny", "--pretrained", "random", "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "carved out of its training images" in captured.err
    assert result["val_images"] > 0 and result["train_images"] + result["val_images"] == 30
    # Epochs were chosen on validation scores, not by their number.
    assert all("clip_benchmark/t2i_R@1" in h for h in result["history"])
    recorded = read_prompt_file(out).extra["splits"]
    assert recorded["images"] == {"train": result["train_images"], "val": result["val_images"], "test": 10}
    assert "carved" in recorded["how"] and recorded["val_fraction"] == 0.1
    # eval reuses the file's test split, untouched by the carving.
    assert main(["eval", str(db), "--prompts", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 10


def test_carving_is_by_image_seeded_and_leaves_named_validation_alone(tiny_db):
    records = load_database(tiny_db).records
    named = [r.__class__(r.key, r.path, r.captions, "test" if i % 4 == 3 else "train") for i, r in enumerate(records)]
    first = split_records(named, SplitConfig(val_fraction=0.3, split_seed=1))
    assert first.carved and {r.key for r in first["val"]} == {r.key for r in split_records(named, SplitConfig(val_fraction=0.3, split_seed=1))["val"]}
    assert {r.key for r in first["val"]} != {r.key for r in split_records(named, SplitConfig(val_fraction=0.3, split_seed=2))["val"]}
    assert not {r.key for r in first["val"]} & {r.key for r in first["train"]}
    assert [r.key for r in first["test"]] == [r.key for r in named if r.split == "test"]
    with_val = [r.__class__(r.key, r.path, r.captions, "val" if i == 0 else r.split) for i, r in enumerate(named)]
    kept = split_records(with_val, SplitConfig(val_fraction=0.3))
    assert not kept.carved and [r.key for r in kept["val"]] == [named[0].key]
    assert "as the database file names them" == kept.how()
    # A hash split that drew no validation image still gets one.
    for seed in range(20):
        assert split_records(records[:12], SplitConfig(val_fraction=0.05, split_seed=seed))["val"]
    assert assign_splits(named) == named  # the low-level assignment keeps the file's word


def test_too_small_to_validate_is_bad_data(tiny_db, tmp_path, capsys):
    db = _with_file_splits(tiny_db, tmp_path, ["train"] + ["test"] * 19)  # 2 training images: none to spare
    code = main(["train", str(db), "--out", str(tmp_path / "p.safetensors"), "--model", "dbprompt-tiny", "--pretrained", "random"])
    err = capsys.readouterr().err
    assert code == 3 and "too few images" in err and str(db) in err


def test_small_splits_are_warned_about_with_what_to_change(tiny_db, tmp_path, capsys):
    args = ["train", str(tiny_db), "--out", str(tmp_path / "p.safetensors"), "--epochs", "1", "--batch-size", "8"]
    assert main(args + ["--model", "dbprompt-tiny", "--pretrained", "random", "--no-progress", "--text-len", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning: the validation split has only" in err and "raise --val-fraction" in err
    assert "warning: the test split has only" in err and "seeded hash" in err
    assert main(["eval", str(tiny_db), "--prompts", str(tmp_path / "p.safetensors")]) == 0
    assert "train again with a higher --test-fraction" in capsys.readouterr().err


def test_train_reports_the_metric_that_chose_the_epoch_never_its_tie_break(tiny_db, tmp_path, capsys, epochs_chosen_on_tiny_validation):
    out = tmp_path / "p.safetensors"
    args = ["train", str(tiny_db), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--no-progress", "--val-fraction", "0.05"]
    assert main(args + ["--model", "dbprompt-tiny", "--pretrained", "random", "--text-len", "2", "--visual-len", "2"]) == 0
    saved = read_prompt_file(out).extra
    best = next(h for h in saved["history"] if h["epoch"] == saved["best_epoch"])
    shown = float(capsys.readouterr().out.rsplit(" ", 1)[1])
    assert shown == round(best[best["selected_by"]], 1) <= 100.0
    assert saved["best_val_score"] > best[best["selected_by"]]  # the tie-break, kept out of what is shown


def test_version(capsys):
    import dbprompt

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"dbprompt {dbprompt.__version__}"


def test_train_help_opens_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    head = capsys.readouterr().out.splitlines()[:10]
    assert head[0].startswith("usage: dbprompt train DB --out FILE --model MODEL")
    assert sum(line.startswith("  dbprompt train ") for line in head) == 3
