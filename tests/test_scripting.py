"""Scripts drive dbprompt: JSON on stdout, messages on stderr, documented exit codes, no tracebacks for user errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dbprompt.cli import errors, main
from dbprompt.data import load_database
from dbprompt.storage import read_prompt_file

TINY = ["--model", "dbprompt-tiny", "--pretrained", "random"]
QUICK = ["--epochs", "1", "--batch-size", "8", "--text-len", "2", "--visual-len", "2", "--vocab", "0"]


@pytest.fixture(scope="module")
def csv_db(tiny_db, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny database as a CSV elsewhere: images under `root`, captions in a non-default column."""
    folder = tmp_path_factory.mktemp("csv")
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption"])
        for record in load_database(tiny_db).records:
            writer.writerow([record.path.relative_to(tiny_db), record.captions[0]])
    return path, tiny_db


@pytest.fixture(scope="module")
def trained(csv_db, tmp_path_factory) -> Path:
    """A prompt file trained on the CSV with --image-root and --caption-column given once."""
    path, root = csv_db
    out = tmp_path_factory.mktemp("trained") / "p.safetensors"
    args = ["train", str(path), "--out", str(out), "--image-root", str(root), "--caption-column", "caption"]
    assert main(args + TINY + QUICK + ["--no-progress"]) == 0
    return out


def run_json(capsys, args: list[str]) -> tuple[dict, str]:
    """Run a command with --json: stdout must be exactly one JSON document."""
    assert main(args + ["--json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_every_reporting_command_speaks_json(csv_db, trained, tmp_path, capsys):
    path, _ = csv_db
    capsys.readouterr()
    train, err = run_json(capsys, ["train", str(path), "--out", str(tmp_path / "q.safetensors"), "--image-root", str(csv_db[1]), "--caption-column", "caption", *TINY, *QUICK])
    assert train["path"].endswith("q.safetensors") and train["val_images"] > 0 and "epoch 1" in err
    assert train["history"][0]["epoch"] == 0 and train["splits"]["images"]["val"] == train["val_images"]
    index, _ = run_json(capsys, ["index", str(path), "--prompts", str(trained), "--out", str(tmp_path / "p.index")])
    assert index["count"] == 40 and index["index"].endswith("p.index")
    evaluation, _ = run_json(capsys, ["eval", str(path), "--prompts", str(trained)])
    assert set(evaluation["rows"]) == {"zero-shot", "prompts (textual+visual+image adapters)"} and evaluation["images"] > 0
    info, _ = run_json(capsys, ["info", str(trained)])
    assert info["backbone"] == "dbprompt-tiny" and info["training"]["read"]["caption_column"] == "caption"
    search, _ = run_json(capsys, ["search", str(tmp_path / "p.index"), "a red circle", "-k", "3"])
    assert len(search["results"]) == 3


def test_image_root_and_caption_column_are_recorded_and_reused(csv_db, trained, tmp_path, capsys, monkeypatch):
    path, root = csv_db
    recorded = read_prompt_file(trained).extra["read"]
    assert recorded["image_root"] == str(root) and recorded["caption_column"] == "caption"
    monkeypatch.chdir(tmp_path)  # the recorded root is absolute: another working directory reads the same
    capsys.readouterr()
    # Without the recorded options the CSV's images are not found (they are not beside it) and its column is unknown.
    assert main(["eval", str(path), *TINY]) == 3
    # With the prompt file, its options are reused and said so.
    assert main(["eval", str(path), "--prompts", str(trained)]) == 0
    err = capsys.readouterr().err
    assert f"as recorded in {trained}" in err and "--caption-column caption" in err and "--image-root" in err
    assert main(["index", str(path), "--prompts", str(trained), "--out", "p.index"]) == 0
    # A flag given again wins over the recorded one.
    assert main(["eval", str(path), "--prompts", str(trained), "--caption-column", "nothing"]) == 3
    assert "nothing" in capsys.readouterr().err


def test_recorded_options_stay_with_their_database(csv_db, trained, tmp_path, capsys):
    copy = tmp_path / "copy.csv"
    copy.write_text(csv_db[0].read_text())
    capsys.readouterr()
    assert main(["eval", str(copy), "--prompts", str(trained)]) == 3  # images are not beside the copy
    assert "are not reused" in capsys.readouterr().err
    # The file names its database by name only: shared, it tells nothing of the owner's directories.
    assert read_prompt_file(trained).extra["database"] == "pairs.csv"


def test_info_reads_an_index_directory(csv_db, trained, tmp_path, capsys):
    assert main(["index", str(csv_db[0]), "--prompts", str(trained), "--out", str(tmp_path / "p.index"), "--no-progress"]) == 0
    capsys.readouterr()
    info, _ = run_json(capsys, ["info", str(tmp_path / "p.index")])
    assert info["count"] == 40 and info["kind"] == "exact" and info["prompts"]["backbone"] == "dbprompt-tiny"
    assert main(["info", str(tmp_path / "p.index")]) == 0
    text = capsys.readouterr().out
    assert "count" in text and "prompt file prompts.safetensors" in text
    # A directory that is no index says so, as bad data.
    assert main(["info", str(tmp_path)]) == errors.BAD_DATA
    assert "not a dbprompt index" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["search", "INDEX"], errors.USAGE, "give either a text QUERY or --image"),
        (["search", "INDEX", "a cat", "-k", "0"], errors.USAGE, "-k must be at least 1"),
        (["train", "DB", "--out", "OUT", *TINY, "--val-fraction", "0"], errors.USAGE, "--val-fraction 0"),
        (["train", "DB", "--out", "OUT", *TINY, "--text-len", "0", "--visual-len", "0", "--vocab", "0", "--visual-adapter", "0"], errors.USAGE, "nothing to train"),
        (["eval", "NOWHERE", *TINY], errors.BAD_DATA, "no such file or folder"),
        (["eval", "DB", "--prompts", "GARBAGE"], errors.BAD_DATA, "not a dbprompt prompt file"),
        (["search", "NOWHERE", "a cat"], errors.BAD_DATA, "not a dbprompt index"),
    ],
)
def test_exit_codes_and_one_line_errors(args, code, words, tiny_db, trained, tmp_path, capsys):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors")
    index = tmp_path / "p.index"
    if "INDEX" in args:
        assert main(["index", str(tiny_db), "--prompts", str(trained), "--out", str(index), "--no-progress"]) == 0
    names = {"DB": tiny_db, "OUT": tmp_path / "o.safetensors", "GARBAGE": garbage, "INDEX": index, "NOWHERE": tmp_path / "nowhere"}
    capsys.readouterr()
    assert main([str(names.get(a, a)) for a in args]) == code
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_usage_errors_from_argparse_are_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval"])
    assert exit_.value.code == errors.USAGE


def test_an_internal_error_is_1_with_the_traceback(tiny_db, monkeypatch, capsys):
    import dbprompt.api

    def broken(*args, **kwargs):
        raise RuntimeError("something no user can fix")

    monkeypatch.setattr(dbprompt.api, "evaluate", broken)
    assert main(["eval", str(tiny_db), *TINY]) == errors.INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "something no user can fix" in err and "bug in dbprompt" in err


def test_the_exit_codes_are_documented():
    from dbprompt.cli import build_parser

    assert "0 ok, 1 internal error, 2 usage, 3 bad data" in build_parser().epilog
    assert (errors.OK, errors.INTERNAL, errors.USAGE, errors.BAD_DATA) == (0, 1, 2, 3)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The real command with stderr a pipe, as in a CI log or `2> file`; output decoded with its carriage returns."""
    done = subprocess.run([sys.executable, "-m", "dbprompt", *args], capture_output=True, cwd=cwd)
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    return done


@pytest.mark.slow  # three real commands, each starting Python and torch: ~30 s on one core
def test_no_progress_bars_when_stderr_is_not_a_terminal(tiny_db, tmp_path):
    out = tmp_path / "p.safetensors"
    done = _cli(["train", str(tiny_db), "--out", str(out), *TINY, *QUICK], tmp_path)
    assert done.returncode == 0, done.stderr
    # Line-based: the epoch lines, no carriage-return bar redraws; the result alone on stdout.
    assert "\r" not in done.stderr and "epoch 1:" in done.stderr
    assert done.stdout.startswith("wrote ") and len(done.stdout.splitlines()) == 1
    # --progress asks for bars anyway; eval has them too.
    done = _cli(["eval", str(tiny_db), "--prompts", str(out), "--progress"], tmp_path)
    assert done.returncode == 0 and "evaluating test" in done.stderr and "\r" in done.stderr
    done = _cli(["index", str(tiny_db), "--prompts", str(out), "--out", "p.index"], tmp_path)
    assert done.returncode == 0 and "\r" not in done.stderr


@pytest.mark.parametrize("command", ["train", "eval", "index"])
def test_no_progress_is_accepted_wherever_there_is_progress(command):
    from dbprompt.cli import build_parser

    args = {"train": ["--out", "x", "--model", "m"], "eval": [], "index": ["--prompts", "p", "--out", "o"]}[command]
    assert build_parser().parse_args([command, "db", *args, "--no-progress"]).progress is False


def test_the_api_draws_no_bars_into_a_log_file(tiny_db, tmp_path, capfd):
    import dbprompt

    dbprompt.train(tiny_db, tmp_path / "p.safetensors", model="dbprompt-tiny", pretrained="random", epochs=1, batch_size=8, text_len=2, visual_len=2)
    dbprompt.build_index(tiny_db, tmp_path / "p.safetensors", tmp_path / "p.index")
    err = capfd.readouterr().err
    assert "\r" not in err and "it/s" not in err  # stderr is not a terminal here: no tqdm frames


def test_a_closed_output_pipe_ends_the_command_quietly(trained, tmp_path):
    command = [sys.executable, "-m", "dbprompt", "info", str(trained), "--json"]
    done = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    done.stdout.close()  # as `| head -0` does: nobody reads what it writes
    err = done.stderr.read().decode()
    assert done.wait(timeout=120) == errors.PIPE_CLOSED and err == ""
