"""The broad world: deterministic, captions true to the scene in many grammars, relations true, its domains shifts."""

import re

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer

from dbprompt_lab.world import generate, sample, write_database
from dbprompt_lab.world.broad import DOMAINS
from dbprompt_lab.world.broad.captions import GRAMMAR, LANGUAGES, SOURCE
from dbprompt_lab.world.broad.scene import BACKGROUNDS, COLOURS, PATTERNS, SHAPES, UNSEEN_PATTERNS, relations
from dbprompt_lab.world.captions import TEXTUAL_ONLY_WORDS
from dbprompt_lab.world.render import cell_centre


def broad(index, domain="source", seed=0, size=64):
    return sample(index, domain=domain, seed=seed, image_size=size, world="broad")


def names(concept):
    """Every name of `concept` in any language, longest first (so "five-pointed star" is found before "star")."""
    found = {n for lang in LANGUAGES.values() for n in lang.names.get(concept, ()) if n}
    return sorted(found, key=len, reverse=True)


def mentioned(caption, concepts):
    """The concepts the caption names, each name matched as whole words and each stretch of text counted once."""
    spans, found = [], set()
    for concept, name in sorted(((c, n) for c in concepts for n in names(c)), key=lambda cn: -len(cn[1])):
        for m in re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", caption):
            if not any(a <= m.start() < b for a, b in spans):
                spans.append(m.span())
                found.add(concept)
    return found


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_samples_other_seed_other_samples(domain):
    first = generate(8, domain=domain, seed=3, world="broad")
    again = generate(8, domain=domain, seed=3, world="broad")
    other = generate(8, domain=domain, seed=4, world="broad")
    assert all(a.tobytes() == b.tobytes() and ca == cb for (a, ca), (b, cb) in zip(first, again))
    assert sum(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(first, other)) < 2


def test_the_broad_world_never_draws_the_proxy_world_s_images():
    assert all(a.tobytes() != b.tobytes() for (a, _), (b, _) in zip(generate(8, world="broad"), generate(8)))


@pytest.mark.parametrize("domain", DOMAINS)
def test_captions_name_exactly_the_drawn_colours_shapes_and_background(domain):
    for index in range(60):
        s = broad(index, domain)
        for caption in s.captions:
            assert mentioned(caption, COLOURS) == {shape.colour for shape in s.scene.shapes}, caption
            assert mentioned(caption, SHAPES) == {shape.kind for shape in s.scene.shapes}, caption
            assert mentioned(caption, BACKGROUNDS) == {s.scene.background}, caption


def test_source_captions_vary_in_grammar_joins_and_words():
    captions = [c for i in range(200) for c in broad(i).captions]
    for marker in ("a photo of", "an image showing", "background:", "; the background is", " with ", " and "):
        assert any(marker in c for c in captions), marker
    for relation in ("left of", "right of", "above", "beneath", "under", "over"):
        assert any(f" {relation} " in c for c in captions), relation
    assert any(" in red " in c for c in captions) and any(" red " in c and " in red" not in c for c in captions)
    assert any("gray" in c for c in captions) and any("grey" in c for c in captions)
    # Three captions of one image rarely share a template: the same scene, said three ways.
    assert np.mean([len({c.split(" ")[0] for c in broad(i).captions}) > 1 for i in range(100)]) > 0.5


def test_relations_said_are_true_of_the_picture():
    said = 0
    for index in range(300):
        s = broad(index)
        kinds = [shape.kind for shape in s.scene.shapes]
        if len(s.scene.shapes) != 2 or kinds[0] == kinds[1] or s.scene.shapes[0].colour == s.scene.shapes[1].colour:
            continue
        for caption in s.captions:
            for relation, words in SOURCE.names.items():
                if relation not in ("left of", "right of", "above", "below"):
                    continue
                hit = next((m for w in words for m in re.finditer(rf" {w} ", caption)), None)
                if hit is None:
                    continue
                before = mentioned(caption[: hit.start()], COLOURS)
                first = next(shape for shape in s.scene.shapes if shape.colour in before)
                second = next(shape for shape in s.scene.shapes if shape is not first)
                assert relation in relations(first, second), (caption, s.scene)
                said += 1
    assert said > 30


def test_filled_shapes_are_drawn_in_their_colour_outlined_ones_hollow():
    checked = set()
    for index in range(200):
        s = broad(index, size=96)
        plain = s.scene.pattern == "plain"
        for shape in s.scene.shapes:
            x, y = cell_centre(shape.position)
            pixel = s.image[int(y * 96), int(x * 96)].astype(int)
            if shape.style == "filled" and shape.kind not in ("crescent", "arrow"):
                assert np.abs(pixel - COLOURS[shape.colour]).max() <= 1
                checked.add("filled")
            if shape.style == "outlined" and plain and shape.kind in ("circle", "square", "hexagon", "pentagon") and shape.size != "small":
                assert np.abs(pixel - BACKGROUNDS[s.scene.background]).max() <= 1
                checked.add("outlined")
    assert checked == {"filled", "outlined"}


def test_the_shifts_are_shifts():
    source = {w for i in range(300) for c in broad(i).captions for w in re.findall(r"[a-z]+", c)}
    # The proxy world's textual shift stays unseen by the broad source, so `textual` is a shift here too.
    assert not source & TEXTUAL_ONLY_WORDS
    grammar = [c for i in range(50) for c in broad(i, "grammar").captions]
    assert all(any(m in c for m in (" sit ", "featuring", "what is shown", "-- all on")) for c in grammar)
    source_captions = [c for i in range(300) for c in broad(i).captions]
    assert not any(j in c for c in source_captions for j in GRAMMAR.joins + (" -- ", " sit ", "featuring", " coloured "))
    assert {broad(i, "texture").scene.pattern for i in range(40)} == set(UNSEEN_PATTERNS)
    assert {broad(i).scene.pattern for i in range(40)} == set(PATTERNS)


def test_captions_fit_a_64_token_context():
    tokenizer = SimpleTokenizer()
    longest = max(len(tokenizer.encode(c)) for d in DOMAINS for i in range(150) for c in broad(i, d).captions)
    assert longest + 2 <= 64  # with the start and end tokens


def test_write_database_writes_the_broad_world(tmp_path):
    out = write_database(tmp_path / "db", 5, domain="grammar", seed=2, image_size=32, world="broad")
    assert len(list((out / "images").iterdir())) == 5
    with pytest.raises(ValueError, match="unknown world"):
        write_database(tmp_path / "x", 1, world="flat")
    with pytest.raises(ValueError, match="broad world"):
        write_database(tmp_path / "x", 1, domain="lexicon", world="broad")
