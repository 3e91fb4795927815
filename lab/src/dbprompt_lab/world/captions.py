"""Caption text for a scene, in the source language or the textual-shift language.

The source language is plain and small; the textual language swaps every
attribute for a synonym and uses its own templates, so a model trained on source
captions meets words it has (almost) never seen.
"""

from __future__ import annotations

import itertools
import re
import numpy as np

from dbprompt_lab.world.scene import Scene, Shape, pick

# Textual-domain words for every colour, background, shape and size (never used by the source,
# except in the rare leak below). No word is shared between two meanings.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "orange": ("tangerine", "amber"),
    "yellow": ("golden", "lemon"),
    "green": ("emerald", "lime"),
    "cyan": ("turquoise", "aqua"),
    "blue": ("azure", "cobalt"),
    "purple": ("violet", "plum"),
    "pink": ("rose", "blush"),
    "grey": ("ash", "slate"),
    "black": ("jet", "ebony"),
    "white": ("ivory", "snow"),
    "brown": ("chocolate", "chestnut"),
    "circle": ("disc", "orb"),
    "square": ("box", "block"),
    "triangle": ("wedge", "pyramid"),
    "star": ("pentagram", "sparkle"),
    "cross": ("plus", "cruciform"),
    "diamond": ("rhombus", "lozenge"),
    "heart": ("valentine", "love symbol"),
    "small": ("tiny", "little"),
    "large": ("big", "huge"),
}

SOURCE_POSITIONS: dict[str, str] = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}

TEXTUAL_POSITIONS: dict[str, tuple[str, ...]] = {
    "top left": ("in the upper left corner", "up in the left corner"),
    "top": ("up top", "near the upper edge"),
    "top right": ("in the upper right corner", "up in the right corner"),
    "left": ("to the left", "at the left side"),
    "center": ("in the middle", "dead centre"),
    "right": ("to the right", "at the right side"),
    "bottom left": ("in the lower left corner", "down in the left corner"),
    "bottom": ("down below", "near the lower edge"),
    "bottom right": ("in the lower right corner", "down in the right corner"),
}

SOURCE_TEMPLATES: tuple[str, ...] = (
    "{objects}, on {a} {background} background",
    "{a} {background} background with {objects}",
    "a picture of {objects}; the background is {background}",
)
SOURCE_JOIN = " and "

TEXTUAL_TEMPLATES: tuple[str, ...] = (
    "{background} backdrop with {objects}",
    "{objects}, set against {a} {background} canvas",
    "seen on {a} {background} backdrop: {objects}",
)
TEXTUAL_JOIN = " alongside "

# Fraction of source captions in which one attribute word is replaced by a synonym, so the
# textual vocabulary is rare in the source rather than absent.
SOURCE_SYNONYM_RATE = 0.03


def _words(text: str) -> set[str]:
    """The lower-case words of a caption or template (placeholders dropped)."""
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text.lower())))


def _vocabulary(*texts: str) -> frozenset[str]:
    return frozenset().union(*(_words(t) for t in texts))


SOURCE_WORDS = _vocabulary(*SOURCE_TEMPLATES, SOURCE_JOIN, *SOURCE_POSITIONS.values(), *SYNONYMS, "a an")
TEXTUAL_WORDS = _vocabulary(
    *TEXTUAL_TEMPLATES,
    TEXTUAL_JOIN,
    *itertools.chain(*TEXTUAL_POSITIONS.values()),
    *itertools.chain(*SYNONYMS.values()),
    "a an",
)
TEXTUAL_ONLY_WORDS = TEXTUAL_WORDS - SOURCE_WORDS


def article(word: str) -> str:
    """The indefinite article before `word`, by its first letter (enough for the worlds' words)."""
    return "an" if word[0] in "aeiou" else "a"


class _Wording:
    """How one caption names things: source words, synonyms, or source words with one leaked synonym."""

    def __init__(self, scene: Scene, rng: np.random.Generator, textual: bool) -> None:
        self._rng = rng
        self._textual = textual
        self._leaked = None
        if not textual and rng.random() < SOURCE_SYNONYM_RATE:
            self._leaked = pick(rng, [scene.background, *(a for s in scene.shapes for a in (s.size, s.colour, s.kind))])

    def name(self, value: str) -> str:
        if self._textual or value == self._leaked:
            return pick(self._rng, SYNONYMS[value])
        return value

    def shape(self, shape: Shape) -> str:
        if self._textual:
            place = pick(self._rng, TEXTUAL_POSITIONS[shape.position])
        else:
            place = SOURCE_POSITIONS[shape.position]
        return f"a {self.name(shape.size)} {self.name(shape.colour)} {self.name(shape.kind)} {place}"


def captions(scene: Scene, rng: np.random.Generator, *, textual: bool, n: int) -> list[str]:
    """`n` captions of `scene`, each a different template/shape-order pair while those last."""
    templates, join = (TEXTUAL_TEMPLATES, TEXTUAL_JOIN) if textual else (SOURCE_TEMPLATES, SOURCE_JOIN)
    layouts = list(itertools.product(templates, itertools.permutations(scene.shapes)))
    order = rng.permutation(len(layouts))
    texts = []
    for k in range(n):
        template, shapes = layouts[order[k % len(layouts)]]
        wording = _Wording(scene, rng, textual)
        background = wording.name(scene.background)
        objects = join.join(wording.shape(s) for s in shapes)
        texts.append(template.format(objects=objects, background=background, a=article(background)))
    return texts
