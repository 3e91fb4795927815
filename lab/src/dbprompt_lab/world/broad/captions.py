"""Captions of a broad-world scene in one of three languages, each caption's grammar and words drawn at random.

`SOURCE` speaks many ways (templates, joins, word orders, synonyms, relations between two shapes), as
web captions do; `TEXTUAL` is the proxy world's textual shift (its synonyms, templates, join and
positions, plus synonyms of the broad world's new words); `GRAMMAR` keeps the source's words but puts
them in templates, joins and word orders the source never uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from dbprompt_lab.world import captions as proxy
from dbprompt_lab.world.broad.scene import Scene, Shape, relations
from dbprompt_lab.world.scene import pick


@dataclass(frozen=True)
class Language:
    names: dict[str, tuple[str, ...]]  # colours, backgrounds, shapes, sizes, styles, patterns, relations
    positions: dict[str, tuple[str, ...]]
    templates: tuple[str, ...]  # {objects}, {bg} (or {background}, as the proxy world names it) and {a}
    relation_templates: tuple[str, ...]  # {related} ("A left of B", maybe a third shape), {bg}, {a}
    joins: tuple[str, ...]
    objects: tuple[str, ...]  # one shape's words: {size} {style} {colour} {kind}; an article goes before


_SOURCE_NAMES: dict[str, tuple[str, ...]] = {
    "red": ("red", "ruby"), "orange": ("orange",), "yellow": ("yellow", "canary"), "green": ("green", "jade"),
    "cyan": ("cyan",), "blue": ("blue", "sapphire"), "purple": ("purple", "lilac"), "pink": ("pink",),
    "magenta": ("magenta",), "navy": ("navy",), "olive": ("olive",), "teal": ("teal",),
    "grey": ("grey", "gray"), "black": ("black", "charcoal"), "white": ("white",), "brown": ("brown", "coffee"),
    "beige": ("beige",),
    "circle": ("circle", "round shape"), "square": ("square",), "triangle": ("triangle",),
    "star": ("star", "five-pointed star"), "cross": ("cross",), "diamond": ("diamond", "kite"), "heart": ("heart",),
    "hexagon": ("hexagon", "six-sided shape"), "pentagon": ("pentagon", "five-sided shape"), "arrow": ("arrow",),
    "crescent": ("crescent", "moon"),
    "small": ("small", "mini"), "medium": ("medium", "medium-sized"), "large": ("large", "oversized"),
    "filled": ("", "solid", "filled"), "outlined": ("outlined", "hollow"), "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted", "polka-dot"),
    "plain": ("",), "checkered": ("checkered", "chequered"),
    # Pattern names of the `texture` domain's backgrounds: never said, as an unlabelled photo would not.
    "rings": ("",), "speckled": ("",),
    "left of": ("left of", "on the left of"), "right of": ("right of", "on the right of"),
    "above": ("above", "over"), "below": ("beneath", "under"),
}
# The source's other word for a thing is used this often (else its first word, the proxy world's).
SYNONYM_RATE = 0.3

_TEXTUAL_NEW: dict[str, tuple[str, ...]] = {
    "magenta": ("fuchsia", "cerise"), "navy": ("midnight", "marine"), "olive": ("moss", "khaki"),
    "teal": ("petrol", "peacock"), "beige": ("sandy", "oatmeal"),
    "hexagon": ("honeycomb", "hex"), "pentagon": ("house shape", "fivegon"), "arrow": ("chevron", "dart"),
    "crescent": ("sickle", "croissant"), "medium": ("midsize", "average"),
    "filled": ("", "opaque"), "outlined": ("contour", "empty"), "striped": ("banded", "pinstriped"),
    "dotted": ("freckled", "stippled"), "plain": ("",), "checkered": ("tartan", "gingham"),
    "rings": ("",), "speckled": ("",),
    "left of": ("to the left of", "westward of"), "right of": ("to the right of", "east of"),
    "above": ("higher than", "atop"), "below": ("lower than", "underneath"),
}

_SOURCE_POSITIONS = {p: (phrase, phrase.replace("at the ", "in the ").replace("in the center", "at the center"))
                     for p, phrase in proxy.SOURCE_POSITIONS.items()}

SOURCE = Language(
    names=_SOURCE_NAMES,
    positions=_SOURCE_POSITIONS,
    templates=proxy.SOURCE_TEMPLATES + (
        "a photo of {objects} on {a} {bg} background",
        "an image showing {objects}, {bg} background",
        "{objects}. background: {bg}",
        "{bg} background: {objects}",
        "{objects}, {bg} background",
    ),
    relation_templates=("{related}, on {a} {bg} background", "a photo of {related}; the background is {bg}"),
    joins=(proxy.SOURCE_JOIN, ", ", " with ", "; "),  # never " plus ": the proxy world's textual word for a cross
    objects=("{size} {style} {colour} {kind}", "{colour} {size} {style} {kind}", "{size} {style} {kind} in {colour}"),
)
TEXTUAL = Language(
    names=dict(proxy.SYNONYMS) | _TEXTUAL_NEW,
    positions=proxy.TEXTUAL_POSITIONS,
    templates=proxy.TEXTUAL_TEMPLATES,
    relation_templates=("{related}, set against {a} {bg} canvas",),
    joins=(proxy.TEXTUAL_JOIN,),
    objects=("{size} {style} {colour} {kind}",),
)
GRAMMAR = Language(
    names={k: tuple(n for n in v if n) or ("",) for k, v in _SOURCE_NAMES.items()} | {"filled": ("solid",)},
    positions=_SOURCE_POSITIONS,
    templates=("on {a} {bg} background sit {objects}", "{bg} background, featuring {objects}", "what is shown: {objects} -- {bg} behind"),
    relation_templates=("{related} -- all on {bg}",),
    joins=(" as well as ", " together with "),
    objects=("{kind} ({size} {style} {colour})", "{kind} coloured {colour}, {size} and {style}"),
)
LANGUAGES = {"source": SOURCE, "textual": TEXTUAL, "grammar": GRAMMAR}


def _tidy(text: str) -> str:
    """Spaces collapsed, and none after "(" or before punctuation (an empty word, e.g. a plain pattern, leaves them)."""
    text = re.sub(r"\(\s+", "(", re.sub(r"\s+", " ", text).strip())
    return re.sub(r"\s+([,.;:)])", r"\1", text)


class _Writer:
    def __init__(self, language: Language, rng: np.random.Generator, source: bool):
        self.language, self.rng, self.source = language, rng, source

    def name(self, concept: str) -> str:
        options = self.language.names[concept]
        if self.source and len(options) > 1 and options[0] and self.rng.random() >= SYNONYM_RATE:
            return options[0]
        return pick(self.rng, options)

    def thing(self, shape: Shape, order: str) -> str:
        words = order.format(size=self.name(shape.size), style=self.name(shape.style), colour=self.name(shape.colour), kind=self.name(shape.kind))
        words = _tidy(words)
        return f"{proxy.article(words)} {words}"

    def placed(self, shape: Shape, order: str) -> str:
        return f"{self.thing(shape, order)} {pick(self.rng, self.language.positions[shape.position])}"


def caption(scene: Scene, rng: np.random.Generator, language: Language, *, source: bool = False) -> str:
    """One caption: a template, a join and a word order drawn for it, and each word's name (`source`: the
    proxy world's word most of the time, else any name of it)."""
    w = _Writer(language, rng, source)
    order = pick(rng, language.objects)
    bg = _tidy(f"{w.name(scene.pattern)} {w.name(scene.background)}")
    shapes = [scene.shapes[i] for i in rng.permutation(len(scene.shapes))]
    pairs = [(a, b, r) for a in shapes for b in shapes if a is not b for r in relations(a, b)]
    if pairs and rng.random() < 0.35:
        a, b, relation = pick(rng, pairs)
        related = f"{w.thing(a, order)} {w.name(relation)} {w.thing(b, order)}"
        rest = [s for s in shapes if s is not a and s is not b]
        related += "".join(pick(rng, language.joins) + w.placed(s, order) for s in rest)
        template = pick(rng, language.relation_templates)
        return _tidy(template.format(related=related, bg=bg, a=proxy.article(bg)))
    objects = pick(rng, language.joins).join(w.placed(s, order) for s in shapes)
    return _tidy(pick(rng, language.templates).format(objects=objects, bg=bg, background=bg, a=proxy.article(bg)))


def captions(scene: Scene, rng: np.random.Generator, language: str, n: int) -> list[str]:
    """`n` captions of `scene` in the named language, distinct while a few redraws find new ones."""
    lang, texts = LANGUAGES[language], []
    for _ in range(n):
        text = caption(scene, rng, lang, source=language == "source")
        for _ in range(4):
            if text not in texts:
                break
            text = caption(scene, rng, lang, source=language == "source")
        texts.append(text)
    return texts


def partial_captions(scene: Scene) -> list[str]:
    """Every short text true of `scene` that names a shape and its colour, in the source's first words: "a red star".

    Web captions often name only the thing that matters. The full captions name every attribute, and
    in a batch of them colour, size and place already tell images apart, so pre-training on them alone
    never has to learn the shape word, which class folders ("a photo of a star") need (issue 25). With its
    colour a partial caption is true of about 1 % of images, so it adds a few positives to a batch, not
    hundreds ("a star" alone: about 17 %, which swamped the pairs' own positives and kept the sigmoid
    loss's bias and scale from moving).
    """
    texts = []
    for s in scene.shapes:
        kind, colour = SOURCE.names[s.kind][0], SOURCE.names[s.colour][0]
        texts.append(f"{proxy.article(colour)} {colour} {kind}")
    return list(dict.fromkeys(texts))
