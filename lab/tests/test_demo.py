"""`dbprompt-lab demo` runs the whole day end to end through the Python API and ends in a searchable index."""

from __future__ import annotations

from dbprompt.cli import main
from dbprompt_lab.cli import main as lab_main
from dbprompt_lab.demo import FALLBACK


def test_demo_end_to_end(tmp_path, capsys):
    work = tmp_path / "demo"
    code = lab_main(["demo", "--dir", str(work), "--images", "40", "--epochs", "1", "--model", FALLBACK])
    out = capsys.readouterr().out
    assert code == 0
    assert (work / "database" / "metadata.jsonl").exists()
    assert (work / "prompts.safetensors").exists()
    assert (work / "index").is_dir()
    assert "zero-shot" in out and "prompts (textual+visual+vocabulary+image adapters)" in out
    assert f"dbprompt serve {work / 'index'}" in out
    # Search the index it built, as the printed hint says.
    capsys.readouterr()
    assert main(["search", str(work / "index"), "a small red star", "-k", "3", "--json"]) == 0
    assert "score" in capsys.readouterr().out
