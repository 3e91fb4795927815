"""The ivfpq kind: IVF-PQ codes in RAM, full vectors in a float16 file on disk, built from chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from search_fixtures import make_prompt_file, write_folder

from dbprompt.cli import main
from dbprompt.index import APPROX_THRESHOLD, IndexFormatError, ImageRow, build_index, load_index, resolve_kind, write_index
from dbprompt.index.manifest import IVFPQ_THRESHOLD
from dbprompt.index.ondisk import FULL_VECTORS
from dbprompt.index.vectors import all_vectors, recall_at_k
from dbprompt.searcher import open_index

# Large indexes (thousands of vectors, IVF-PQ training): left out of `make test-fast`.
pytestmark = pytest.mark.slow

DIM = 64  # the tiny backbone's
# Colours the tiny backbone embeds at cos < 0.99 from each other: float16 rounding cannot swap them.
COLOURS = [(r, g, b) for r in (0, 120, 255) for g in (0, 120, 255) for b in (0, 255)]


@pytest.fixture
def prompts(tmp_path, tiny_backbone):
    return make_prompt_file(tmp_path / "a.safetensors", tiny_backbone, seed=1)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Clusters of about 75 around 40 centres, cos ~0.7 to their centre: near neighbours exist, as in real embeddings."""
    centres = unit(np.random.default_rng(99).standard_normal((40, DIM), dtype=np.float32))
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(centres), size=n)
    return unit(centres[picks] + rng.standard_normal((n, DIM), dtype=np.float32) / np.sqrt(DIM))


def rows_for(n: int) -> list[ImageRow]:
    return [ImageRow(i, f"images/{i}.png", Path(f"/nowhere/{i}.png"), (), 10, 0, 8, 8, "0" * 64) for i in range(n)]


def in_chunks(vectors: np.ndarray, size: int = 700):
    """A one-pass generator, as vectors arrive from an embedding run."""
    for start in range(0, len(vectors), size):
        yield vectors[start : start + size]


def test_auto_picks_exact_then_ivf_then_ivfpq():
    assert [resolve_kind("auto", n) for n in (APPROX_THRESHOLD, APPROX_THRESHOLD + 1)] == ["exact", "ivf"]
    assert [resolve_kind("auto", n) for n in (IVFPQ_THRESHOLD, IVFPQ_THRESHOLD + 1)] == ["ivf", "ivfpq"]
    assert resolve_kind("ivfpq", 100) == "ivfpq"


@pytest.mark.parametrize("arrive", ["in chunks", "as one array"])
def test_ivfpq_index_is_built_loaded_and_searched(tmp_path, prompts, arrive):
    vectors = clustered(3000)
    given = in_chunks(vectors) if arrive == "in chunks" else vectors
    info = write_index(tmp_path / "idx", prompts, given, rows_for(3000), kind="ivfpq", root="/nowhere")
    assert info.kind == "ivfpq" and info.factory.startswith("IVF") and info.factory.endswith(",PQ8x4fs")
    assert set(info.search_params) == {"nprobe", "k_factor"} and info.recall_at_10 >= 0.95
    stored = np.load(tmp_path / "idx" / FULL_VECTORS)
    assert stored.dtype == np.float16 and stored.shape == (3000, DIM)
    np.testing.assert_allclose(stored, vectors, atol=1e-3)  # row i is image i, rounded to float16

    index = load_index(tmp_path / "idx")
    try:
        assert (index.vectors.ntotal, index.vectors.k_factor) == (3000, info.search_params["k_factor"])
        for i in (0, 1234, 2999):
            best = index.search(vectors[i], k=5)
            assert best[0].image.id == i and best[0].score == pytest.approx(1.0, abs=2e-3)
            assert [h.score for h in best] == sorted((h.score for h in best), reverse=True)
        queries = clustered(200, seed=5)
        truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        assert recall_at_k(index.vectors.search(queries, 10)[1], truth) >= 0.9
        assert np.array_equal(all_vectors(index.vectors), stored)
    finally:
        index.close()


def test_updating_an_ivfpq_index_rebuilds_it_from_new_and_reused_vectors(tmp_path, tiny_backbone, prompts):
    colours = {f"{i:03d}.png": (rgb, f"colour {i}") for i, rgb in enumerate(COLOURS)}
    db = write_folder(tmp_path / "db", colours)
    build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, kind="ivfpq", progress=False)
    (db / "images" / "004.png").unlink()
    del colours["004.png"]
    new = {"018.png": ((120, 0, 120), "new colour 18"), "019.png": ((255, 120, 120), "new colour 19")}
    for name, (rgb, _) in new.items():
        Image.new("RGB", (16, 16), rgb).save(db / "images" / name)
    colours |= new
    (db / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"images/{n}", "text": [c]}) + "\n" for n, (_, c) in colours.items())
    )
    info = build_index(db, prompts, tmp_path / "idx", backbone=tiny_backbone, kind="ivfpq", progress=False)
    assert info.kind == "ivfpq" and info.count == 19
    assert (info.last_build["embedded"], info.last_build["reused"], info.last_build["removed"]) == (2, 17, 1)
    build_index(db, prompts, tmp_path / "fresh", backbone=tiny_backbone, kind="exact", progress=False)
    with open_index(tmp_path / "idx") as updated, open_index(tmp_path / "fresh") as exact:
        got = all_vectors(updated.index.vectors)
        want = all_vectors(exact.index.vectors)
        keys = [row.key for row in updated.index.all_rows()]
        assert keys == [row.key for row in exact.index.all_rows()]
        np.testing.assert_allclose(got, want, atol=2e-3)
        for name in ("000.png", "019.png"):
            hits = updated.search_image(Image.open(db / "images" / name), k=3)
            assert hits[0].image.key == f"images/{name}"


def test_a_broken_ivfpq_index_is_refused_with_a_plain_message(tmp_path, prompts, capsys):
    write_index(tmp_path / "idx", prompts, clustered(500), rows_for(500), kind="ivfpq", root="/nowhere")
    full = tmp_path / "idx" / FULL_VECTORS
    original = full.read_bytes()
    full.write_bytes(original[:-DIM])  # a copy cut short
    with pytest.raises(IndexFormatError, match="unreadable full vectors"):
        load_index(tmp_path / "idx")
    np.save(full, np.zeros((499, DIM), dtype=np.float16))
    with pytest.raises(IndexFormatError, match=r"holds \(499, 64\) float16, the index \(500, 64\)"):
        load_index(tmp_path / "idx")
    full.unlink()
    with pytest.raises(IndexFormatError, match="incomplete index, vectors.f16.npy is missing"):
        load_index(tmp_path / "idx")
    assert main(["search", str(tmp_path / "idx"), "red"]) == 3  # bad data: a message, no traceback
    err = capsys.readouterr().err
    assert "vectors.f16.npy is missing" in err and "Traceback" not in err

    full.write_bytes(original)
    manifest = tmp_path / "idx" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(data | {"search_params": data["search_params"] | {"k_factor": 0}}))
    with pytest.raises(IndexFormatError, match="k_factor must be at least 1"):
        load_index(tmp_path / "idx")


def test_bad_chunks_write_no_index(tmp_path, prompts):
    vectors = clustered(2000)
    vectors[1500, 3] = np.nan
    with pytest.raises(ValueError, match="the vector of images/1500.png is not finite"):
        write_index(tmp_path / "idx", prompts, in_chunks(vectors), rows_for(2000), kind="ivfpq", root="/nowhere")
    with pytest.raises(ValueError, match="got 1400 vectors for 2000 rows"):
        write_index(tmp_path / "idx", prompts, in_chunks(clustered(1400)), rows_for(2000), kind="ivfpq", root="/nowhere")
    with pytest.raises(ValueError, match="at least 16 vectors"):
        write_index(tmp_path / "idx", prompts, clustered(10), rows_for(10), kind="ivfpq", root="/nowhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]  # nor anything half-written
