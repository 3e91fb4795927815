"""Index building, updating, resuming and refusing, on the tiny random-weight backbone."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from PIL import Image
from search_fixtures import make_prompt_file, vectors_by_key, write_folder

import dbprompt.index.build as index_module
from dbprompt.backbones import load_backbone
from dbprompt.cli import main
from dbprompt.data import DataError, load_database
from dbprompt.index import (
    APPROX_THRESHOLD,
    IndexFormatError,
    build_index,
    load_index,
    resolve_kind,
)
from dbprompt.compat import IncompatibleError
from dbprompt.locking import OutputExistsError
from dbprompt.model import PromptedCLIP
from dbprompt.prompts import PromptConfig
from dbprompt.runtime import Runtime
from dbprompt.searcher import Searcher, open_index
from dbprompt.compat import file_sha256

COLOURS = [(r, g, b) for r in (0, 120, 255) for g in (0, 120, 255) for b in (0, 255)]  # 18 distinct


def folder(root, n=12, offset=0):
    return write_folder(root, {f"{i:03d}.png": (COLOURS[(i + offset) % 18], f"colour number {i}") for i in range(n)})


@pytest.fixture
def prompts(tmp_path, tiny_backbone):
    return make_prompt_file(tmp_path / "a.safetensors", tiny_backbone, seed=1)


def test_build_writes_a_self_describing_index(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db")
    info = build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, batch_size=5, progress=False)
    assert (info.kind, info.factory, info.count, info.dim) == ("exact", "Flat", 12, 64)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["format"] == "dbprompt-index/2"
    assert manifest["root"] == str(db.resolve()) and manifest["database"] == str(db)
    assert manifest["prompt_sha256"] == file_sha256(prompts) == file_sha256(tmp_path / "idx" / "prompts.safetensors")
    assert manifest["fingerprint"] == tiny_backbone.fingerprint()
    assert manifest["backbone"] == "dbprompt-tiny" and manifest["count"] == 12
    with sqlite3.connect(tmp_path / "idx" / "metadata.sqlite") as con:
        key, path, captions, size, mtime, w, h, sha = con.execute(
            "SELECT key, path, captions, bytes, mtime_ns, width, height, sha256 FROM images WHERE id = 3"
        ).fetchone()
    st = (db / "images" / "003.png").stat()
    assert (key, path) == ("images/003.png", str(db / "images" / "003.png"))
    assert sha == file_sha256(db / "images" / "003.png")
    assert json.loads(captions) == ["colour number 3"]
    assert (size, mtime, w, h) == (st.st_size, st.st_mtime_ns, 16, 16)
    # nothing is left beside the index
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "db", "idx"]


def test_vectors_are_the_prompted_model_s(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=4)
    # fp32, as the model below: bf16 would be chosen by itself on a CPU with AMX
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False, runtime=Runtime(bf16=False))
    model = PromptedCLIP.from_prompt_file(prompts, tiny_backbone)
    transform = tiny_backbone.image_transform()
    pixels = torch.stack([transform(Image.open(db / "images" / f"{i:03d}.png").convert("RGB")) for i in range(4)])
    with torch.no_grad():
        expected = model.encode_image(pixels).numpy()
        unprompted = torch.nn.functional.normalize(tiny_backbone.encode_image(pixels), dim=-1).numpy()
    stored = vectors_by_key(tmp_path / "idx")
    got = np.stack([stored[f"images/{i:03d}.png"] for i in range(4)])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, unprompted, atol=1e-3)  # the visual prompt is in the vectors


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_each_image_first(tmp_path, tiny_backbone, prompts, kind):
    db = folder(tmp_path / "db", n=18)
    info = build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, kind=kind, progress=False)
    assert info.kind == kind and info.recall_at_10 >= 0.95 and info.search_params
    searcher = open_index(tmp_path / "idx")
    try:
        for i in (0, 7, 17):
            hits = searcher.search_image(Image.open(db / "images" / f"{i:03d}.png"), k=3)
            assert hits[0].image.key == f"images/{i:03d}.png"
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    finally:
        searcher.close()


def test_auto_kind_switches_to_ivf_above_the_threshold():
    assert resolve_kind("auto", APPROX_THRESHOLD) == "exact"
    assert resolve_kind("auto", APPROX_THRESHOLD + 1) == "ivf"
    with pytest.raises(ValueError, match="kind"):
        resolve_kind("annoy", 10)


def test_update_embeds_only_new_and_changed_and_drops_deleted(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=10)
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    before = vectors_by_key(tmp_path / "idx")

    images = {f"{i:03d}.png": (COLOURS[i], f"colour number {i}") for i in range(10) if i not in (2, 5)}
    rewritten = {"001.png": ((9, 99, 199), "changed colour")} | {
        f"{i:03d}.png": (COLOURS[i], f"new colour {i}") for i in (10, 11, 12)
    }
    for name in ("002.png", "005.png"):
        (db / "images" / name).unlink()
    for name, (rgb, _) in rewritten.items():
        Image.new("RGB", (16, 16), rgb).save(db / "images" / name)
    images |= rewritten
    (db / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"images/{n}", "text": [c]}) + "\n" for n, (_, c) in images.items())
    )

    info = build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    assert info.count == 11
    assert (info.last_build["embedded"], info.last_build["reused"], info.last_build["removed"]) == (4, 7, 2)
    after = vectors_by_key(tmp_path / "idx")
    assert set(after) == {f"images/{n}" for n in images}
    for key in ("images/000.png", "images/009.png"):
        assert np.array_equal(after[key], before[key])
    assert not np.allclose(after["images/001.png"], before["images/001.png"])
    index = load_index(tmp_path / "idx")
    try:
        rows = {r.key: r for r in index.all_rows()}
        assert rows["images/011.png"].captions == ("new colour 11",)
        assert sorted(r.id for r in rows.values()) == list(range(11))
    finally:
        index.close()

    # a run with nothing to do leaves the index untouched
    stamp = (tmp_path / "idx" / "manifest.json").stat().st_mtime_ns
    again = build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    assert again.last_build["embedded"] == 4 and again.count == 11  # the manifest of the last real build
    assert (tmp_path / "idx" / "manifest.json").stat().st_mtime_ns == stamp


def test_new_prompts_reembed_everything_once_forced(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=6)
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    other = make_prompt_file(tmp_path / "b.safetensors", tiny_backbone, seed=2)
    with pytest.raises(OutputExistsError, match="index of another prompt file.*--force"):
        build_index(db, other, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    index = load_index(tmp_path / "idx")
    assert index.info.prompt_sha256 == file_sha256(prompts)  # untouched
    index.close()
    info = build_index(db, other, tmp_path / "idx", backbone=tiny_backbone, progress=False, force=True)
    assert info.last_build["embedded"] == 6 and info.prompt_sha256 == file_sha256(other)


class Interrupt(KeyboardInterrupt):
    pass


def interrupt_after(monkeypatch, calls: int):
    real = index_module.embed_images
    seen = []

    def flaky(*args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            raise Interrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(index_module, "embed_images", flaky)


def test_interrupted_build_resumes_and_never_leaves_a_partial_index(tmp_path, tiny_backbone, prompts, monkeypatch):
    db = folder(tmp_path / "db", n=18)
    out = tmp_path / "idx"
    interrupt_after(monkeypatch, calls=3)
    with pytest.raises(Interrupt):
        build_index(db, prompts, out, backbone=tiny_backbone, batch_size=4, checkpoint_every=4, progress=False)
    assert not out.exists()
    work = tmp_path / ".idx.work"
    assert len(list(work.glob("chunk-*.npz"))) == 3  # 12 images checkpointed

    monkeypatch.undo()
    info = build_index(db, prompts, out, backbone=tiny_backbone, batch_size=4, checkpoint_every=4, progress=False)
    assert (info.last_build["embedded"], info.count) == (6, 18)
    assert not work.exists()
    fresh = build_index(db, prompts, tmp_path / "fresh", backbone=tiny_backbone, progress=False)
    assert fresh.count == 18
    resumed, scratch = vectors_by_key(out), vectors_by_key(tmp_path / "fresh")
    for key in scratch:
        np.testing.assert_allclose(resumed[key], scratch[key], atol=1e-5)


def test_interrupted_update_keeps_the_old_index_searchable(tmp_path, tiny_backbone, prompts, monkeypatch):
    db = folder(tmp_path / "db", n=6)
    out = tmp_path / "idx"
    build_index(db, prompts, out, backbone=tiny_backbone, progress=False)
    folder(tmp_path / "db", n=12, offset=3)  # every image changes, 6 are new
    interrupt_after(monkeypatch, calls=1)
    with pytest.raises(Interrupt):
        build_index(db, prompts, out, backbone=tiny_backbone, batch_size=4, checkpoint_every=4, progress=False)
    index = load_index(out)
    assert index.info.count == 6
    index.close()
    monkeypatch.undo()
    info = build_index(db, prompts, out, backbone=tiny_backbone, batch_size=4, progress=False)
    assert (info.count, info.last_build["embedded"]) == (12, 8)


def test_a_killed_rename_is_recovered(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=5)
    out = tmp_path / "idx"
    first = build_index(db, prompts, out, backbone=tiny_backbone, progress=False)
    os.replace(out, tmp_path / ".idx.old")  # as if killed between the two renames of atomic_dir
    (tmp_path / ".idx.abc.tmp").mkdir()  # and a half-written new index beside it
    info = build_index(db, prompts, out, backbone=tiny_backbone, progress=False)
    assert info == first  # the old index came back, and was found up to date
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "db", "idx"]
    assert load_index(out).info.count == 5


def test_bad_images_stop_the_build_or_are_skipped(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=5)
    (db / "images" / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="003.png"):
        build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    assert not (tmp_path / "idx").exists()
    info = build_index(
        load_database(db, skip_bad=True), prompts, tmp_path / "idx", backbone=tiny_backbone, skip_bad=True,
        progress=False,
    )
    assert info.count == 4
    assert any("003.png" in problem for problem in info.last_build["skipped"])


def test_index_refuses_other_prompts_and_backbones(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=3)
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    other = make_prompt_file(tmp_path / "b.safetensors", tiny_backbone, seed=2)
    with pytest.raises(IncompatibleError, match="sha256"):
        open_index(tmp_path / "idx", prompt_file=other)
    index = load_index(tmp_path / "idx")
    with pytest.raises(IncompatibleError, match="fingerprint"):
        Searcher(index, PromptedCLIP(load_backbone("dbprompt-tiny", seed=1), PromptConfig.none()), Runtime())
    index.close()
    open_index(tmp_path / "idx", prompt_file=prompts).close()  # the right file is accepted
    with pytest.raises(IncompatibleError, match="fingerprint"):
        PromptedCLIP.from_prompt_file(other, load_backbone("dbprompt-tiny", seed=1))

    shutil.copyfile(other, tmp_path / "idx" / "prompts.safetensors")  # tampered copy
    with pytest.raises(IndexFormatError, match="prompts.safetensors"):
        load_index(tmp_path / "idx")


def test_never_replaces_a_directory_that_is_not_an_index(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=3)
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"irreplaceable")
    with pytest.raises(OutputExistsError, match="refusing to replace"):
        build_index(db, prompts, precious, backbone=tiny_backbone, progress=False)
    assert (precious / "holiday.jpg").read_bytes() == b"irreplaceable"
    (tmp_path / "empty").mkdir()
    assert build_index(db, prompts, tmp_path / "empty", backbone=tiny_backbone, progress=False).count == 3


def test_broken_index_directories_are_named_in_errors(tmp_path, tiny_backbone, prompts):
    with pytest.raises(IndexFormatError, match="nowhere"):
        load_index(tmp_path / "nowhere")
    db = folder(tmp_path / "db", n=3)
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    (tmp_path / "idx" / "vectors.faiss").unlink()
    with pytest.raises(IndexFormatError, match="vectors.faiss"):
        load_index(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="manifest.json"):
        load_index(tmp_path / "idx")


def test_cli_index_and_search(tmp_path, prompts, capsys):
    db = folder(tmp_path / "db", n=6)
    out = tmp_path / "idx"
    assert main(["index", str(db), "--prompts", str(prompts), "--out", str(out), "--no-progress"]) == 0
    assert "6 images, exact index" in capsys.readouterr().out

    assert main(["search", str(out), "--image", str(db / "images" / "004.png"), "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in result["results"]] == [1, 2, 3]
    assert result["results"][0]["key"] == "images/004.png"

    assert main(["search", str(out), "colour number 2", "-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["#", "score", "image", "caption"] and len(table) == 3

    # Usage errors exit 2, bad data (indexes, prompt files) 3.
    for argv, message, code in [
        (["search", str(out)], "either a text QUERY or --image", 2),
        (["search", str(out), "x", "-k", "0"], "-k must be at least 1", 2),
        (["search", str(tmp_path / "db"), "x"], "not a dbprompt index", 3),
        (["search", str(out), "x", "--prompts", str(db / "metadata.jsonl")], "sha256", 3),
        (["index", str(db), "--prompts", str(tmp_path / "none.safetensors"), "--out", str(out)], "none.safetensors", 3),
    ]:
        assert main(argv) == code
        assert message in capsys.readouterr().err


def test_manifests_are_checked_field_by_field(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=3)
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    manifest = tmp_path / "idx" / "manifest.json"
    good = json.loads(manifest.read_text())
    for change, message in [
        ({"count": "3"}, "count is str"),
        ({"dim": True}, "dim is bool"),
        ({"search_params": {"nprobe": "all"}}, "search_params must map names to integers"),
        ({"root": None}, "root is NoneType"),
        ({"evil": 1}, r"unexpected or missing fields \['evil'\]"),
    ]:
        manifest.write_text(json.dumps(good | change))
        with pytest.raises(IndexFormatError, match=message):
            load_index(tmp_path / "idx")


def test_an_index_of_the_old_format_is_rebuilt_in_place(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=3)
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    manifest = tmp_path / "idx" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format": "dbprompt-index/1"}))
    with pytest.raises(IndexFormatError, match="older dbprompt.*rebuild it with `dbprompt index`"):
        open_index(tmp_path / "idx")
    info = build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)  # same database: no --force
    assert info.last_build["embedded"] == 3
    open_index(tmp_path / "idx").close()


def test_search_reaches_past_deleted_images_to_keep_k_results(tmp_path, tiny_backbone, prompts):
    db = folder(tmp_path / "db", n=12)
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    with open_index(tmp_path / "idx") as searcher:
        first = [h.image.key for h in searcher.search("colour number 3", k=5)]
        for key in first[:3]:
            (db / key).unlink()
        again = [h.image.key for h in searcher.search("colour number 3", k=5)]
    assert len(again) == 5 and not set(again) & set(first[:3]) and again[:2] == first[3:]


def test_a_collection_moved_away_is_said_after_two_rounds_not_searched_through(tmp_path, tiny_backbone, prompts, capsys, monkeypatch):
    import dbprompt.searcher as searcher_module

    db = folder(tmp_path / "db", n=40)
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, progress=False)
    moved = db.rename(tmp_path / "elsewhere")  # the drive is not mounted
    looked, real = [], searcher_module.present
    monkeypatch.setattr(searcher_module, "present", lambda row: looked.append(row) or real(row))  # counts the stats
    with open_index(tmp_path / "idx") as searcher:
        hits = searcher.search("colour number 3", k=5)
        note = searcher.missing_note(hits)
    assert len(hits) == 0 and hits.missing == 10 and len(looked) == 5 + 10  # two rounds, not up to k + 1,024
    assert "no longer where the index found them" in note and str(db.resolve()) in note
    monkeypatch.undo()
    assert main(["search", str(tmp_path / "idx"), "colour number 3", "-k", "5", "--json"]) == 0
    captured = capsys.readouterr()
    assert "no longer where the index found them" in captured.err and json.loads(captured.out)["missing"] == 10
    from fastapi.testclient import TestClient

    from dbprompt.runtime import Runtime
    from dbprompt.server import create_app

    answer = TestClient(create_app([tmp_path / "idx"], runtime=Runtime())).get("/api/databases/idx/search", params={"q": "colour number 3", "k": 5}).json()
    assert answer["results"] == [] and answer["missing"] == 10 and "no longer where the index found them" in answer["note"]  # the page shows it
    moved.rename(db)
    with open_index(tmp_path / "idx") as searcher:
        hits = searcher.search("colour number 3", k=5)
    assert len(hits) == 5 and hits.missing == 0 and searcher.missing_note(hits) is None


def test_a_zero_shot_index_needs_no_prompt_file_and_trained_prompts_replace_it(tmp_path, tiny_backbone, prompts, capsys):
    """Search before training: the backbone's own features, through the untrained prompt file the index keeps."""
    db = folder(tmp_path / "db", n=4)
    out = tmp_path / "idx"
    argv = ["index", str(db), "--out", str(out), "--model", "dbprompt-tiny", "--pretrained", "random", "--no-progress", "--no-bf16"]
    assert main(argv) == 0
    transform = tiny_backbone.image_transform()
    pixels = torch.stack([transform(Image.open(db / "images" / f"{i:03d}.png").convert("RGB")) for i in range(4)])
    with torch.no_grad():
        own = torch.nn.functional.normalize(tiny_backbone.encode_image(pixels), dim=-1).numpy()
    stored = vectors_by_key(out)
    np.testing.assert_allclose(np.stack([stored[f"images/{i:03d}.png"] for i in range(4)]), own, atol=1e-5)
    capsys.readouterr()
    assert main(["search", str(out), "colour number 2", "-k", "2", "--json", "--model", "dbprompt-tiny", "--pretrained", "random"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 2
    before = (out / "manifest.json").read_text()
    assert main(argv) == 0 and (out / "manifest.json").read_text() == before  # the same prompt file: nothing to redo
    # Trained prompts take over only when asked; then every image is embedded through them.
    trained = ["index", str(db), "--out", str(out), "--prompts", str(prompts), "--no-progress"]
    assert main(trained) == 2 and "another prompt file" in capsys.readouterr().err
    assert main(trained + ["--force"]) == 0
    assert json.loads((out / "manifest.json").read_text())["prompt_sha256"] == file_sha256(prompts)
    assert main(["index", str(db), "--out", str(out)]) == 2
    assert "(--model) for a zero-shot index" in capsys.readouterr().err
