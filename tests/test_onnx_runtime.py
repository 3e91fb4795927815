"""`dbprompt index/search/serve --runtime onnx`: the index's own export, equal to PyTorch, never used stale.

dbprompt-tiny with random weights and prompts perturbed from zero (search_fixtures.make_prompt_file), on
the tiny database of coloured shapes (40 images, 3 captions each).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from search_fixtures import make_prompt_file, vectors_by_key
from tinydata import write_database

from dbprompt.backbones import load_backbone
from dbprompt.cli import main
from dbprompt.compat import file_sha256
from dbprompt.index import onnx_embed
from dbprompt.index.manifest import read_info
from dbprompt.index.onnx_queries import OnnxQueries
from dbprompt.onnx.manifest import IMAGE, MANIFEST, OnnxExportError, read_export_manifest
from dbprompt.runtime import Runtime
from dbprompt.searcher import open_index
from dbprompt.server import create_app

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOLERANCE = 1e-4
ONNX = Runtime(engine="onnx")


def index(db, prompts, out, *extra: str) -> int:
    return main(["index", str(db), "--prompts", str(prompts), "--out", str(out), "--no-progress", *extra])


def top10(index_dir, runtime: Runtime, queries: list[str]) -> list[list[str]]:
    with open_index(index_dir, runtime=runtime) as searcher:
        return [[h.image.key for h in searcher.search(q, 10)] for q in queries]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One database and prompt file, indexed by PyTorch and by ONNX Runtime (fp32), through the CLI."""
    root = tmp_path_factory.mktemp("onnx-runtime")
    db = write_database(root / "shapes", 40, seed=0, image_size=32)
    prompts = make_prompt_file(root / "p.safetensors", load_backbone("dbprompt-tiny"), seed=1)
    assert index(db, prompts, root / "torch") == 0
    assert index(db, prompts, root / "onnx", "--runtime", "onnx", "--precision", "fp32") == 0
    return db, prompts, root


def captions(db, n: int = 12) -> list[str]:
    lines = [json.loads(line) for line in (db / "metadata.jsonl").read_text().splitlines()]
    return [line["text"][0] for line in lines[:n]]


def test_onnx_index_equals_the_torch_index_and_keeps_its_export(built):
    _, prompts, root = built
    torch_vectors, onnx_vectors = vectors_by_key(root / "torch"), vectors_by_key(root / "onnx")
    assert torch_vectors.keys() == onnx_vectors.keys() and len(onnx_vectors) == 40
    assert max(np.abs(torch_vectors[k] - onnx_vectors[k]).max() for k in torch_vectors) <= TOLERANCE
    info = read_info(root / "onnx")
    assert info.onnx == {"export": "onnx", "requested": "fp32", "precision": "fp32"}
    export = json.loads((root / "onnx" / "onnx" / MANIFEST).read_text())
    assert export["prompt_sha256"] == file_sha256(prompts) == info.prompt_sha256
    assert not read_info(root / "torch").onnx and not (root / "torch" / "onnx").exists()
    assert not list(root.glob(".onnx.*"))  # no work directory left behind


def test_search_and_serve_on_onnx_give_torch_s_top_10(built):
    db, _, root = built
    queries = captions(db)
    want = top10(root / "torch", Runtime(), queries)
    assert top10(root / "onnx", ONNX, queries) == want
    assert top10(root / "onnx", Runtime(), queries) == want  # the torch engine searches an onnx-built index too
    image = db / "images" / sorted(os.listdir(db / "images"))[5]
    with open_index(root / "onnx", runtime=ONNX) as searcher:
        assert isinstance(searcher._queries, OnnxQueries)  # the export alone: no backbone, no torch
        assert searcher.search(image, 1)[0].image.path.name == image.name
    with TestClient(create_app([root / "onnx"], runtime=ONNX)) as client:
        for query, keys in zip(queries[:4], want):
            answer = client.get("/api/databases/onnx/search", params={"q": query, "k": 10}).json()
            assert [r["key"] for r in answer["results"]] == keys


def test_an_update_reuses_the_export_and_a_new_prompt_file_exports_again(built, tmp_path, capsys):
    db, prompts, root = built
    out = tmp_path / "idx"
    capsys.readouterr()
    assert index(db, prompts, out, "--runtime", "onnx", "--precision", "fp32") == 0
    assert "exporting the towers" in capsys.readouterr().err
    inode = (out / "onnx" / IMAGE).stat().st_ino
    first = min((db / "images").iterdir())
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # one image changed
    assert index(db, prompts, out, "--runtime", "onnx", "--precision", "fp32", "--json") == 0
    captured = capsys.readouterr()
    assert "export" not in captured.err.lower()
    assert json.loads(captured.out)["last_build"]["embedded"] == 1
    assert (out / "onnx" / IMAGE).stat().st_ino == inode  # the same file, linked into the new index
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    assert index(db, prompts, out) == 0  # an update on PyTorch keeps the export
    assert (out / "onnx" / IMAGE).stat().st_ino == inode and read_info(out).onnx["precision"] == "fp32"
    assert top10(out, ONNX, captions(db, 3)) == top10(root / "torch", Runtime(), captions(db, 3))
    other = make_prompt_file(tmp_path / "q.safetensors", load_backbone("dbprompt-tiny"), seed=2)
    assert index(db, other, out, "--runtime", "onnx", "--precision", "fp32", "--force") == 0
    assert "exporting the towers" in capsys.readouterr().err
    assert json.loads((out / "onnx" / MANIFEST).read_text())["prompt_sha256"] == file_sha256(other)
    assert top10(out, ONNX, captions(db, 3)) == top10(out, Runtime(), captions(db, 3))


def test_a_tampered_or_missing_export_is_refused_by_search_and_made_again_by_index(built, tmp_path, capsys):
    db, prompts, root = built
    assert main(["search", str(root / "torch"), "a shape", "--runtime", "onnx"]) == 3
    err = capsys.readouterr().err
    assert "holds no ONNX export" in err and "--runtime onnx" in err and "dbprompt index" in err
    out = tmp_path / "idx"
    assert index(db, prompts, out, "--runtime", "onnx", "--precision", "fp32") == 0
    manifest = out / "onnx" / MANIFEST
    data = json.loads(manifest.read_text())
    manifest.unlink()  # a hard link: the fixture's index keeps its own copy
    manifest.write_text(json.dumps(data | {"prompt_sha256": "0" * 64}))
    capsys.readouterr()
    assert main(["search", str(out), "a shape", "--runtime", "onnx"]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "prompt file" in err[0] and "--runtime onnx" in err[0], err
    assert index(db, prompts, out, "--runtime", "onnx", "--precision", "fp32", "--force") == 0
    assert "exporting to ONNX again" in capsys.readouterr().err
    assert json.loads(manifest.read_text())["prompt_sha256"] == file_sha256(prompts)
    assert main(["search", str(out), "a shape", "--runtime", "onnx"]) == 0


def test_auto_precision_takes_int8_only_where_it_keeps_the_top_10(built, tmp_path, monkeypatch, capsys):
    db, prompts, root = built
    monkeypatch.setattr(onnx_embed, "AGREEMENT", 1.01)  # no int8 tower can agree that well
    assert index(db, prompts, tmp_path / "fp32", "--runtime", "onnx") == 0
    record = read_info(tmp_path / "fp32").onnx
    assert record["requested"] == "auto" and record["precision"] == "fp32" and record["measured_on"] == 40
    assert 0 <= record["agreement_at_10"] <= 1
    assert "ONNX precision fp32" in capsys.readouterr().err
    assert json.loads((tmp_path / "fp32" / "onnx" / MANIFEST).read_text())["int8"]
    monkeypatch.setattr(onnx_embed, "AGREEMENT", 0.0)
    assert index(db, prompts, tmp_path / "int8", "--runtime", "onnx") == 0
    assert read_info(tmp_path / "int8").onnx["precision"] == "int8"
    int8, fp32 = vectors_by_key(tmp_path / "int8"), vectors_by_key(root / "torch")
    assert 0.9 < min(float(int8[k] @ fp32[k]) for k in fp32) and max(np.abs(int8[k] - fp32[k]).max() for k in fp32) > TOLERANCE
    image = db / "images" / sorted(os.listdir(db / "images"))[7]
    with open_index(tmp_path / "int8", runtime=ONNX) as searcher:
        assert searcher._queries.towers.int8  # image queries through the tower the vectors came from
        assert searcher.search(image, 1)[0].image.path.name == image.name


def test_agreement_counts_shared_top_10_members():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(30, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    assert onnx_embed.top_agreement(queries, images, images) == 1.0
    assert onnx_embed.top_agreement(queries, images, -images) < 0.5
    assert onnx_embed.top_agreement(images, images, images, exclude_self=True) == 1.0


def test_missing_onnxruntime_is_one_line_and_ray_is_refused(built, tmp_path, monkeypatch, capsys):
    db, prompts, root = built
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    capsys.readouterr()
    assert index(db, prompts, tmp_path / "idx", "--runtime", "onnx") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "pip install 'dbprompt[onnx]'" in err[0], err
    assert index(db, prompts, root / "onnx") == 0  # an update on PyTorch needs no onnxruntime to keep the export
    monkeypatch.undo()
    assert index(db, prompts, tmp_path / "idx", "--runtime", "onnx", "--ray") == 2
    assert "--ray" in capsys.readouterr().err


def test_an_edited_tower_is_refused_by_search_and_serve_and_exported_again_by_index(built, tmp_path, capsys):
    db, prompts, _ = built
    out = tmp_path / "idx"
    assert index(db, prompts, out, "--runtime", "onnx", "--precision", "fp32") == 0
    export = json.loads((out / "onnx" / MANIFEST).read_text())
    assert export["files"][IMAGE]["bytes"] == (out / "onnx" / IMAGE).stat().st_size
    assert export["files"][IMAGE]["sha256"] == file_sha256(out / "onnx" / IMAGE)
    tower = bytearray((out / "onnx" / IMAGE).read_bytes())
    for edit, said in ((lambda b: b[:-1], "bytes"), (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "sha256")):
        (out / "onnx" / IMAGE).unlink()  # not written through a hard link
        (out / "onnx" / IMAGE).write_bytes(edit(tower))
        capsys.readouterr()
        for command in (["search", str(out), "a shape"], ["serve", str(out)]):
            assert main([*command, "--runtime", "onnx"]) == 3
            err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert len(err) == 1 and IMAGE in err[0] and said in err[0] and "dbprompt index" in err[0], err
    assert index(db, prompts, out, "--runtime", "onnx", "--precision", "fp32") == 0
    err = capsys.readouterr().err
    assert f"exporting to ONNX again: ONNX export {out / 'onnx'}: {IMAGE} was changed" in err, err
    assert file_sha256(out / "onnx" / IMAGE) == json.loads((out / "onnx" / MANIFEST).read_text())["files"][IMAGE]["sha256"]
    assert main(["search", str(out), "a shape", "--runtime", "onnx"]) == 0


def test_an_export_without_file_records_is_unverified_not_refused(built, tmp_path):
    _, _, root = built
    shutil.copytree(root / "onnx", tmp_path / "idx")
    manifest = tmp_path / "idx" / "onnx" / MANIFEST
    data = json.loads(manifest.read_text())
    del data["files"]  # as exports made before the records were kept
    manifest.write_text(json.dumps(data))
    assert read_export_manifest(manifest.parent).files == {}
    assert len(top10(tmp_path / "idx", ONNX, ["a shape"])[0]) == 10
    manifest.write_text(json.dumps(data | {"files": {IMAGE: {"bytes": True, "sha256": "0" * 64}}}))
    with pytest.raises(OnnxExportError, match="bad manifest: files"):
        read_export_manifest(manifest.parent)


def test_an_update_that_embeds_another_kind_of_vector_embeds_every_image_again(built, tmp_path, capsys):
    db, prompts, _ = built
    out, again = tmp_path / "idx", "embedding every image again"

    def update(*extra: str, touch: bool = False) -> dict:
        if touch:  # one image changed: the build cannot return the index as it was
            first = min((db / "images").iterdir())
            os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
        capsys.readouterr()
        assert index(db, prompts, out, "--json", *extra) == 0
        captured = capsys.readouterr()
        return json.loads(captured.out)["last_build"] | {"said": again in captured.err}

    first = update()
    assert first["embedded"] == 40 and not first["said"]
    assert read_info(out).vectors == {"engine": "torch", "precision": "fp32"}
    int8 = ("--runtime", "onnx", "--precision", "int8")
    assert update(*int8) == {"embedded": 40, "reused": 0, "removed": 0, "skipped": [], "said": True}
    assert read_info(out).vectors == {"engine": "onnx", "precision": "int8"}
    manifest = (out / MANIFEST).read_bytes()
    assert not update(*int8)["said"] and (out / MANIFEST).read_bytes() == manifest  # the same build again: nothing to do
    assert update(*int8, touch=True) | {"said": None} == {"embedded": 1, "reused": 39, "removed": 0, "skipped": [], "said": None}
    assert update(touch=True)["embedded"] == 40  # back on PyTorch: fp32 again, all of it
    assert read_info(out).vectors["engine"] == "torch" and read_info(out).onnx["precision"] == "fp32"  # image queries as the vectors
    fp32 = update("--runtime", "onnx", "--precision", "fp32", touch=True)
    assert fp32["embedded"] == 1 and not fp32["said"]  # fp32 of either engine is one kind (equal within 1e-4)
    assert update("--bf16", touch=True)["embedded"] == 40
    assert read_info(out).vectors == {"engine": "torch", "precision": "bf16"}
