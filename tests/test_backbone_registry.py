"""Backbones named with --model are remembered on this machine, by fingerprint (backbones.registry).

A prompt file made with `--model hf:DIR` then loads in eval, index, search and serve without
--model; on a machine that never named it, one line (exit 3) says which --model to add. The route
a file records is still never followed, and the fingerprint is still checked. Every model is a
random tiny CLIP written in Hugging Face layout (nothing is downloaded); each test has its own
cache directory (conftest.own_cache_dir).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from audit import watching
from fastapi.testclient import TestClient
from hostile import forge_prompt_file
from test_hf_backbone import save_clip

from dbprompt.backbones import load_named_backbone, registry
from dbprompt.backbones.recorded import RecordedBackboneError, load_recorded_backbone
from dbprompt.cli import errors, main
from dbprompt.compat import BackboneId
from dbprompt.runtime import Runtime
from dbprompt.server import create_app
from dbprompt.storage import read_prompt_file

FAST = ["--no-progress", "--batch-size", "8"]
PROMPTS = ["--text-len", "2", "--visual-len", "0", "--vocab", "0", "--visual-adapter", "0"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A real command in a fresh process, as a user runs it (it inherits this test's DBPROMPT_CACHE_DIR)."""
    return subprocess.run([sys.executable, "-m", "dbprompt", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def trained(tiny_db, tmp_path):
    """A prompt file trained (one epoch) with `--model hf:DIR` named relatively: (prompt file, model directory)."""
    folder = save_clip(tmp_path / "m")
    prompts = tmp_path / "p.safetensors"
    args = ["train", str(tiny_db), "--model", "hf:m", "--out", str(prompts), "--epochs", "1", *PROMPTS, *FAST]
    assert _run(args, cwd=tmp_path) == 0
    return prompts, folder


def _run(args: list[str], cwd: Path) -> int:
    """`main(args)` run from `cwd` (a relative --model must be remembered absolute)."""
    before = os.getcwd()
    os.chdir(cwd)
    try:
        return main(args)
    finally:
        os.chdir(before)


def test_a_prompt_file_made_with_hf_dir_needs_no_model_in_eval_index_search_and_serve(trained, tiny_db, tmp_path):
    prompts, folder = trained
    entry = json.loads(registry.registry_path().read_text())[read_prompt_file(prompts).fingerprint]
    assert entry["model"] == f"hf:{folder.resolve()}" and entry["recorded_at"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    index = tmp_path / "index"
    outputs = []
    for args in (
        ["eval", str(tiny_db), "--prompts", str(prompts), "--json", *FAST],
        ["index", str(tiny_db), "--prompts", str(prompts), "--out", str(index), *FAST],
        ["search", str(index), "a small red star", "-k", "3", "--json"],
        ["info", str(prompts), "--json"],
    ):
        done = _cli(args, cwd=elsewhere)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        outputs.append(done.stdout)
    evaluated, _, found, info = outputs
    assert len(json.loads(evaluated)["rows"]) == 2 and len(json.loads(found)["results"]) == 3
    assert json.loads(info)["backbone_loads_with"].startswith(f"--model hf:{folder.resolve()} (named on this machine")
    client = TestClient(create_app([index], runtime=Runtime()))
    answer = client.get("/api/databases/index/search", params={"q": "a small red star", "k": 3})
    assert answer.status_code == 200 and len(answer.json()["results"]) == 3


def test_without_the_entry_one_line_names_the_model_to_add_and_naming_it_remembers(trained, tiny_db, tmp_path, capsys, monkeypatch):
    """A copy of the prompt file on a machine that never named its backbone: exit 3, and exactly what to add."""
    prompts, folder = trained
    copy = shutil.copy(prompts, tmp_path / "copy.safetensors")
    monkeypatch.setenv("DBPROMPT_CACHE_DIR", str(tmp_path / "another-machine"))
    capsys.readouterr()
    for args in (["eval", str(tiny_db), "--prompts", str(copy)], ["info", str(copy)]):
        assert main(args) == errors.BAD_DATA == 3
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"records backbone 'hf:{folder.resolve()}'" in err and f"`--model hf:{folder.resolve()}`" in err
    assert main(["eval", str(tiny_db), "--prompts", str(copy), "--model", f"hf:{folder}", *FAST]) == 0  # named: remembered
    assert main(["eval", str(tiny_db), "--prompts", str(copy), *FAST]) == 0
    assert "records" not in capsys.readouterr().err


def test_the_route_a_file_records_is_never_followed_only_the_one_named_here(trained, tmp_path):
    """A forged file naming another path with a remembered fingerprint loads the remembered route, opening nothing else."""
    prompts, folder = trained
    forged = forge_prompt_file(prompts, tmp_path / "forged.safetensors", metadata={"backbone": "hf:/etc", "pretrained": "/etc/passwd"})
    with watching() as seen:
        backbone = load_recorded_backbone(read_prompt_file(forged).backbone_id, source="forged")
    assert backbone.name == f"hf:{folder.resolve()}" and backbone.fingerprint() == read_prompt_file(prompts).fingerprint
    assert not [p for p in seen.opened if p.startswith("/etc")] and seen.network == []
    unknown = BackboneId("hf:/etc", "hf:/etc", "0" * 16)
    with pytest.raises(RecordedBackboneError, match=r"fingerprint 0{16}\): that names a path.*`--model hf:/etc`"):
        load_recorded_backbone(unknown, source="forged")


def test_a_remembered_route_that_now_loads_other_weights_is_refused(trained, tiny_db, capsys):
    prompts, folder = trained
    shutil.rmtree(folder)
    save_clip(folder, seed=1)  # other weights where the user's model was
    capsys.readouterr()
    assert main(["eval", str(tiny_db), "--prompts", str(prompts)]) == errors.BAD_DATA
    err = capsys.readouterr().err
    assert f"`--model hf:{folder.resolve()}`, which this machine remembers" in err and "now loads other weights" in err
    shutil.rmtree(folder)
    assert main(["eval", str(tiny_db), "--prompts", str(prompts)]) == errors.BAD_DATA
    assert "no longer loads" in capsys.readouterr().err


def test_a_corrupt_registry_is_ignored_with_a_warning_and_replaced_by_the_next_named_backbone(tmp_path, own_cache_dir, caplog):
    folder = save_clip(tmp_path / "m")
    path = registry.registry_path()
    path.write_text("{not json")
    fingerprint = load_named_backbone(f"hf:{folder}", None).fingerprint()  # remembered over the corrupt file
    assert "ignoring" in caplog.text and str(path) in caplog.text
    assert registry.lookup(fingerprint).model == f"hf:{folder.resolve()}"
    path.write_text(json.dumps({fingerprint: {"model": 3}, "other": "x"}))  # malformed entries: skipped
    assert registry.lookup(fingerprint) is None
    path.unlink()
    path.mkdir()  # unreadable as a file, and not to be written: the command still runs
    assert load_named_backbone(f"hf:{folder}", None).fingerprint() == fingerprint
    assert "could not remember" in caplog.text and registry.lookup(fingerprint) is None


def test_only_routes_naming_a_local_path_are_remembered_with_absolute_paths(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from dbprompt.backbones import load_backbone

    load_named_backbone("dbprompt-tiny", "random")  # loads as recorded anyway
    assert not registry.registry_path().exists()
    state = load_backbone("dbprompt-tiny", seed=4).model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "ckpt.safetensors"))
    monkeypatch.chdir(tmp_path)
    named = load_named_backbone("dbprompt-tiny", "ckpt.safetensors")
    route = registry.lookup(named.fingerprint())
    assert route.flags() == f"--model dbprompt-tiny --pretrained {tmp_path.resolve() / 'ckpt.safetensors'}"
    monkeypatch.chdir("/")
    assert load_recorded_backbone(BackboneId.of(named)).fingerprint() == named.fingerprint()


def test_processes_remembering_at_once_lose_no_entry():
    """Threads open the lock file each on their own, so they exclude each other as processes do."""
    backbones = [SimpleNamespace(name=f"local-dir:/m{i}", pretrained=f"local-dir:/m{i}", fingerprint=lambda i=i: f"{i:016x}") for i in range(8)]
    threads = [threading.Thread(target=registry.remember, args=(b, None)) for b in backbones]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [registry.lookup(f"{i:016x}").model for i in range(8)] == [f"local-dir:/m{i}" for i in range(8)]


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("DBPROMPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert registry.registry_path() == tmp_path / "dbprompt" / "backbones.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.registry_path() == tmp_path / "home" / ".cache" / "dbprompt" / "backbones.json"
