"""The four domains, and a description of their vocabularies for shift measurements and tests."""

from __future__ import annotations

from dataclasses import dataclass

from dbprompt_lab.world import captions, scene


@dataclass(frozen=True)
class Domain:
    name: str
    visual_shift: bool  # textured backgrounds, rotation, colour jitter, blur
    textual_shift: bool  # synonym vocabulary and another caption style


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("source", visual_shift=False, textual_shift=False),
        Domain("visual", visual_shift=True, textual_shift=False),
        Domain("textual", visual_shift=False, textual_shift=True),
        Domain("both", visual_shift=True, textual_shift=True),
    )
}


def get_domain(name: str) -> Domain:
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; choose one of {', '.join(DOMAINS)}") from None


def describe() -> dict[str, object]:
    """Everything a caller may need to reason about the world's vocabularies, as plain JSON-able data."""
    return {
        "domains": list(DOMAINS),
        "colours": list(scene.COLOURS),
        "backgrounds": list(scene.BACKGROUNDS),
        "shapes": list(scene.SHAPES),
        "sizes": list(scene.SIZES),
        "positions": list(scene.POSITIONS),
        "synonyms": {word: list(alternatives) for word, alternatives in captions.SYNONYMS.items()},
        "source_words": sorted(captions.SOURCE_WORDS),
        "textual_words": sorted(captions.TEXTUAL_WORDS),
        "textual_only_words": sorted(captions.TEXTUAL_ONLY_WORDS),
        "source_synonym_rate": captions.SOURCE_SYNONYM_RATE,
    }
