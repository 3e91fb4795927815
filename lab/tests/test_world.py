"""The synthetic world: determinism, captions true to the pictures, the four domains, the imagefolder writer."""

import json
import re

import numpy as np
import pytest
from PIL import Image

import dbprompt_lab.world.writer as writer
from dbprompt_lab.world import DOMAINS, describe, generate, sample, write_database
from dbprompt_lab.world.captions import SOURCE_POSITIONS, TEXTUAL_POSITIONS
from dbprompt_lab.world.render import cell_centre
from dbprompt_lab.world.scene import BACKGROUNDS, COLOURS, POSITIONS

VOCAB = describe()
TEXTUAL_ONLY = set(VOCAB["textual_only_words"])


def words(caption: str) -> set[str]:
    return set(re.findall(r"[a-z]+", caption))


def mentions(caption: str, concept: str) -> bool:
    """Whether `caption` names `concept` by its source word or any synonym."""
    names = [concept, *VOCAB["synonyms"][concept]]
    return any(re.search(rf"\b{re.escape(name)}\b", caption) for name in names)


def pixel_at_centre(image: np.ndarray, position: str) -> np.ndarray:
    x, y = cell_centre(position)
    size = image.shape[0]
    return image[int(y * size), int(x * size)]


def free_cells(image: np.ndarray, occupied: set[str], margin: int = 3) -> list[np.ndarray]:
    """Pixels of the grid cells no shape sits in, minus a margin for blur and rotated corners."""
    cell = image.shape[0] // 3
    return [
        image[row * cell + margin : (row + 1) * cell - margin, col * cell + margin : (col + 1) * cell - margin]
        for position, (col, row) in POSITIONS.items()
        if position not in occupied
    ]


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_gives_identical_images_and_captions(domain):
    first, second = generate(12, domain=domain, seed=5), generate(12, domain=domain, seed=5)
    for (image_a, captions_a), (image_b, captions_b) in zip(first, second):
        assert image_a.tobytes() == image_b.tobytes()
        assert captions_a == captions_b


def test_different_seeds_and_domains_give_different_data():
    base = generate(12, seed=0)
    for other in (generate(12, seed=1), generate(12, domain="textual", seed=0)):
        assert sum(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(base, other)) < 3
        assert all(ca != cb for (_, ca), (_, cb) in zip(base, other))


def test_written_files_are_byte_identical_across_runs(tmp_path):
    first = write_database(tmp_path / "a", 10, domain="both", seed=3)
    second = write_database(tmp_path / "b", 10, domain="both", seed=3)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 11
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


@pytest.mark.parametrize("domain", DOMAINS)
def test_captions_name_exactly_the_drawn_shapes_and_background(domain):
    for index in range(120):
        s = sample(index, domain=domain)
        assert len(s.captions) == 3 and len(set(s.captions)) == 3
        colours = {shape.colour for shape in s.scene.shapes}
        kinds = {shape.kind for shape in s.scene.shapes}
        for caption in s.captions:
            assert {c for c in VOCAB["colours"] if mentions(caption, c)} == colours, caption
            assert {k for k in VOCAB["shapes"] if mentions(caption, k)} == kinds, caption
            assert {b for b in VOCAB["backgrounds"] if mentions(caption, b)} == {s.scene.background}, caption
            for shape in s.scene.shapes:
                assert mentions(caption, shape.size), caption
                if DOMAINS[domain].textual_shift:
                    assert any(p in caption for p in TEXTUAL_POSITIONS[shape.position]), caption
                else:
                    assert SOURCE_POSITIONS[shape.position] in caption, caption


def test_source_images_draw_the_scene_exactly():
    for index in range(120):
        s = sample(index)
        for shape in s.scene.shapes:
            assert tuple(pixel_at_centre(s.image, shape.position)) == COLOURS[shape.colour]
        occupied = {shape.position for shape in s.scene.shapes}
        for patch in free_cells(s.image, occupied):
            assert (patch == BACKGROUNDS[s.scene.background]).all()


def test_visual_shift_keeps_colours_recognisable_but_not_exact():
    palette = np.array(list(COLOURS.values()), dtype=float)
    names = list(COLOURS)
    exact = checked = 0
    for index in range(200):
        s = sample(index, domain="visual")
        for shape in s.scene.shapes:
            if shape.size != "large":  # a small shape's centre pixel can be blurred into its background
                continue
            pixel = pixel_at_centre(s.image, shape.position).astype(float)
            assert names[int(np.argmin(((palette - pixel) ** 2).sum(axis=1)))] == shape.colour
            exact += tuple(pixel.astype(int)) == COLOURS[shape.colour]
            checked += 1
    assert checked > 50 and exact < checked / 4


def test_visual_backgrounds_vary_where_source_ones_are_flat():
    def background_variance(domain: str) -> float:
        variances = []
        for index in range(60):
            s = sample(index, domain=domain)
            patches = free_cells(s.image, {shape.position for shape in s.scene.shapes})
            variances.append(np.mean([p.reshape(-1, 3).astype(float).var(axis=0).sum() for p in patches]))
        return float(np.mean(variances))

    assert background_variance("source") == 0
    assert background_variance("textual") == 0
    assert background_variance("visual") > 100
    assert background_variance("both") > 100


def test_textual_captions_use_words_the_source_rarely_does():
    assert TEXTUAL_ONLY >= {"crimson", "disc", "tiny", "backdrop"}
    source_words = set(VOCAB["source_words"])
    textual_words = set(VOCAB["textual_words"])
    for domain in ("textual", "both"):
        for _, captions in generate(100, domain=domain, seed=1):
            for caption in captions:
                assert words(caption) <= textual_words, caption
                assert words(caption) & TEXTUAL_ONLY, caption
    source_captions = [c for _, captions in generate(400, seed=1) for c in captions]
    leaked = [c for c in source_captions if words(c) & TEXTUAL_ONLY]
    assert all(words(c) <= source_words for c in source_captions if c not in leaked)
    assert 0.005 < len(leaked) / len(source_captions) < 0.08


def test_rendering_at_224_pixels():
    for domain in DOMAINS:
        s = sample(0, domain=domain, image_size=224)
        assert s.image.shape == (224, 224, 3) and s.image.dtype == np.uint8
    s = sample(1, image_size=224)
    for shape in s.scene.shapes:
        assert tuple(pixel_at_centre(s.image, shape.position)) == COLOURS[shape.colour]


def test_database_metadata_points_at_the_written_images(tmp_path):
    out = write_database(tmp_path / "db", 25, domain="visual", seed=2, captions_per_image=2)
    lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 25
    for index, line in enumerate(lines):
        record = json.loads(line)
        assert record["file_name"] == f"images/{index:06d}.png"
        assert isinstance(record["text"], list) and len(record["text"]) == 2
        expected = sample(index, domain="visual", seed=2, captions_per_image=2)
        assert record["text"] == expected.captions
        with Image.open(out / record["file_name"]) as image:
            assert np.array_equal(np.asarray(image.convert("RGB")), expected.image)
    assert sorted(p.name for p in out.iterdir()) == ["images", "metadata.jsonl"]


def test_rewrite_removes_stale_images(tmp_path):
    out = write_database(tmp_path / "db", 8)
    write_database(out, 5)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 5


def test_interrupted_write_leaves_no_metadata(tmp_path, monkeypatch):
    out = write_database(tmp_path / "db", 5)
    real_encode = writer.encode_png
    calls = []

    def failing_encode(image):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_encode(image)

    monkeypatch.setattr(writer, "encode_png", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        write_database(out, 10, seed=9)
    assert not (out / "metadata.jsonl").exists()


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown domain"):
        sample(0, domain="sketch")
    with pytest.raises(ValueError):
        sample(0, image_size=8)
    with pytest.raises(ValueError):
        sample(0, captions_per_image=0)
    out = write_database(tmp_path / "db", 3)
    with pytest.raises(ValueError, match="unknown domain"):
        write_database(out, 3, domain="sketch")
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 3
